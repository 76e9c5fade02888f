from lodsgs.cli import main

main()
