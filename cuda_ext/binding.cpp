// Torch binding of the fused guidance kernel (guidance_kernel.cu): checks inputs, picks the dtype,
// passes raw pointers and the current CUDA stream.
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

extern "C" int lodsgs_guidance_grad_f32(const void*, const void*, const void*, const float*, void*, long, long,
                                        float, int, cudaStream_t);
extern "C" int lodsgs_guidance_grad_f16(const void*, const void*, const void*, const float*, void*, long, long,
                                        float, int, cudaStream_t);

torch::Tensor guidance_grad(torch::Tensor eps_c, torch::Tensor eps_u, torch::Tensor eps, torch::Tensor w,
                            double omega, bool normalized) {
  TORCH_CHECK(eps_c.is_cuda() && eps_u.is_cuda() && eps.is_cuda() && w.is_cuda(), "all inputs must be CUDA");
  TORCH_CHECK(eps_c.sizes() == eps_u.sizes() && eps_c.sizes() == eps.sizes(), "noise shapes differ");
  TORCH_CHECK(eps_c.scalar_type() == eps_u.scalar_type() && eps_c.scalar_type() == eps.scalar_type(),
              "noise dtypes differ");
  TORCH_CHECK(w.scalar_type() == torch::kFloat32 && w.dim() == 1 && w.size(0) == eps_c.size(0),
              "w must be float32 [B]");
  TORCH_CHECK(eps_c.is_contiguous() && eps_u.is_contiguous() && eps.is_contiguous() && w.is_contiguous(),
              "inputs must be contiguous");
  auto out = torch::empty_like(eps_c);
  const long n = eps_c.numel();
  const long per_sample = eps_c.size(0) > 0 ? n / eps_c.size(0) : 1;
  auto stream = at::cuda::getCurrentCUDAStream().stream();
  int err;
  if (eps_c.scalar_type() == torch::kFloat32) {
    err = lodsgs_guidance_grad_f32(eps_c.data_ptr(), eps_u.data_ptr(), eps.data_ptr(), w.data_ptr<float>(),
                                   out.data_ptr(), n, per_sample, (float)omega, normalized, stream);
  } else {
    TORCH_CHECK(eps_c.scalar_type() == torch::kFloat16, "only float16 and float32 are supported");
    err = lodsgs_guidance_grad_f16(eps_c.data_ptr(), eps_u.data_ptr(), eps.data_ptr(), w.data_ptr<float>(),
                                   out.data_ptr(), n, per_sample, (float)omega, normalized, stream);
  }
  TORCH_CHECK(err == 0, "guidance kernel launch failed: ", cudaGetErrorString((cudaError_t)err));
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("guidance_grad", &guidance_grad, "fused LODS/SDS guidance gradient (CUDA)");
}
