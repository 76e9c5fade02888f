// Fused guidance gradient: out = w[b] * (eps_u + omega * (eps_c - eps_u) - eps) * inv_scale, NaN/Inf -> 0.
// One pass over the tensors; fp32 arithmetic for fp16 and fp32 storage. No torch headers: this file
// compiles with plain nvcc, and binding.cpp hands it raw pointers and the current stream.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

__device__ __forceinline__ float load(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, long i) { return __half2float(p[i]); }
__device__ __forceinline__ void store(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__half* p, long i, float v) { p[i] = __float2half(v); }

template <typename T>
__global__ void guidance_grad_kernel(const T* __restrict__ eps_c, const T* __restrict__ eps_u,
                                     const T* __restrict__ eps, const float* __restrict__ w, T* __restrict__ out,
                                     long n, long per_sample, float omega, float inv_scale) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x) {
    const float c = load(eps_c, i), u = load(eps_u, i), e = load(eps, i);
    float g = w[i / per_sample] * (u + omega * (c - u) - e) * inv_scale;
    if (!isfinite(g)) g = 0.0f;
    store(out, i, g);
  }
}

template <typename T>
int launch(const void* eps_c, const void* eps_u, const void* eps, const float* w, void* out, long n,
           long per_sample, float omega, int normalized, cudaStream_t stream) {
  if (n == 0) return 0;
  const int threads = 256;
  long blocks = (n + threads - 1) / threads;
  if (blocks > 65535L * 8) blocks = 65535L * 8;
  guidance_grad_kernel<T><<<(unsigned)blocks, threads, 0, stream>>>(
      static_cast<const T*>(eps_c), static_cast<const T*>(eps_u), static_cast<const T*>(eps), w,
      static_cast<T*>(out), n, per_sample, omega, normalized ? 1.0f / omega : 1.0f);
  return (int)cudaGetLastError();
}

}  // namespace

extern "C" int lodsgs_guidance_grad_f32(const void* eps_c, const void* eps_u, const void* eps, const float* w,
                                        void* out, long n, long per_sample, float omega, int normalized,
                                        cudaStream_t stream) {
  return launch<float>(eps_c, eps_u, eps, w, out, n, per_sample, omega, normalized, stream);
}

extern "C" int lodsgs_guidance_grad_f16(const void* eps_c, const void* eps_u, const void* eps, const float* w,
                                        void* out, long n, long per_sample, float omega, int normalized,
                                        cudaStream_t stream) {
  return launch<__half>(eps_c, eps_u, eps, w, out, n, per_sample, omega, normalized, stream);
}
