"""Orbit cameras: OpenCV view matrices, intrinsics, sampling ranges and view labels."""

import math

import torch

from lodsgs.cameras import CameraConfig, eval_cameras, orbit_cameras, sample_cameras, view_label, view_labels


def project(cams, points):
    """Pixel coordinates and camera depth of world points [P,3] for every camera."""
    homo = torch.cat([points, torch.ones(len(points), 1)], dim=1)
    cam = (cams.viewmats @ homo.T).transpose(1, 2)[..., :3]  # [C,P,3]
    uv = (cams.Ks @ cam.transpose(1, 2)).transpose(1, 2)
    return uv[..., :2] / uv[..., 2:3], cam[..., 2]


def test_origin_projects_to_centre_and_up_is_up():
    cams = orbit_cameras(torch.tensor([0.0, 30.0, -10.0]), torch.tensor([0.0, 90.0, -135.0]), 3.0, 50.0, 64, 48)
    uv, z = project(cams, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]))
    assert torch.allclose(uv[:, 0], torch.tensor([32.0, 24.0]), atol=1e-4)
    assert torch.allclose(z[:, 0], torch.full((3,), 3.0), atol=1e-5)
    # a point above the origin (+y) appears above the centre: smaller row index (OpenCV y down)
    assert (uv[:, 1, 1] < 24.0).all()


def test_camera_positions_and_rotation_are_orthonormal():
    cams = orbit_cameras(torch.tensor([20.0]), torch.tensor([90.0]), 2.0, 60.0, 32, 32)
    pos = cams.positions[0]
    expected = 2.0 * torch.tensor([math.cos(math.radians(20)), math.sin(math.radians(20)), 0.0])
    assert torch.allclose(pos, expected, atol=1e-5)
    R = cams.viewmats[0, :3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-5)
    assert torch.isclose(torch.det(R), torch.tensor(1.0), atol=1e-5)


def test_focal_length_matches_fov():
    cams = orbit_cameras(0.0, 0.0, 3.0, 90.0, 64, 64)
    assert torch.isclose(cams.Ks[0, 1, 1], torch.tensor(32.0), atol=1e-4)  # tan(45°) = 1


def test_sampling_respects_ranges_and_stratifies_azimuth():
    cfg = CameraConfig(elevation=(-10, 45), radius=(2.5, 4.0), fovy=(40, 70))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        cams = sample_cameras(cfg, 8, g)
        assert cams.elevation.min() >= -10 - 1e-4 and cams.elevation.max() <= 45 + 1e-4
        r = cams.positions.norm(dim=-1)
        assert r.min() >= 2.5 - 1e-4 and r.max() <= 4.0 + 1e-4
        # stratified: one camera per 45° azimuth bin
        bins = ((cams.azimuth + 180) // 45).long().clamp(0, 7)
        assert sorted(bins.tolist()) == list(range(8))


def test_sampling_is_reproducible():
    cfg = CameraConfig()
    a = sample_cameras(cfg, 4, torch.Generator().manual_seed(3))
    b = sample_cameras(cfg, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a.viewmats, b.viewmats)


def test_view_labels():
    assert view_label(0, 0) == "front"
    assert view_label(0, 90) == "side"
    assert view_label(0, -90) == "side"
    assert view_label(0, 180) == "back"
    assert view_label(0, -170) == "back"
    assert view_label(70, 0) == "overhead"
    cams = eval_cameras(CameraConfig(), 4)
    assert view_labels(cams) == ["front", "side", "back", "side"]
