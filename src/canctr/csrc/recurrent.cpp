// DIEN's two recurrences for inference on the CPU (float32, no autograd), the whole time loop in one call.
//
// At scoring size (one user: the extractor GRU at batch 1, the AUGRU at 100 candidates, hidden 36) a time
// step is a few microseconds of arithmetic, so a Python loop of a dozen tensor calls per step spends most of
// its time in the calls themselves. Here a step is two ATen calls (the recurrent matmul into a buffer, and
// the gates' sigmoid, ATen's vectorised kernel) plus plain loops the compiler vectorises; tanh is taken as
// 2 sigmoid(2z) - 1 (torch's CPU tanh is several times slower than its sigmoid). The Python references are
// in canctr/layers/sequence.py (`_augru_infer_reference`, torch's nn.GRU); tests hold these to them.
// Built on first use by torch.utils.cpp_extension (canctr/layers/compiled.py).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

namespace {

void check_cpu_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, " must be a float32 CPU tensor");
}

// The BLAS that torch's CPU build links (MKL on x86-64 Linux exports it from libtorch_cpu); weak, so a build
// without it still loads and `gemm_rows` goes through ATen instead.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

// out[B, N] = beta * out + alpha * a[B, K] @ w[K, N], all row-major and contiguous: BLAS (column-major) sees
// out^T = w^T a^T. Straight to the BLAS call: addmm's checks and dispatch cost as much as the product here.
void gemm_rows(int64_t B, int64_t N, int64_t K, float alpha, const float* a, const float* w, float beta, float* out) {
  if (B == 0) return;
  if (sgemm_ != nullptr) {
    const int m = static_cast<int>(N), n = static_cast<int>(B), k = static_cast<int>(K);
    sgemm_("N", "N", &m, &n, &k, &alpha, w, &m, a, &k, &beta, out, &m);
    return;
  }
  const auto opt = at::TensorOptions().dtype(at::kFloat);
  at::Tensor o = at::from_blob(out, {B, N}, opt);
  at::addmm_out(o, o, at::from_blob(const_cast<float*>(a), {B, K}, opt),
                at::from_blob(const_cast<float*>(w), {K, N}, opt), beta, alpha);
}

// out[b, :] = row b of x (Bx = B rows, or 1 row repeated), row stride `stride`
void fill_rows(float* out, const float* x, int64_t B, int64_t N, int64_t stride, bool shared) {
  for (int64_t b = 0; b < B; ++b) {
    const float* src = x + (shared ? 0 : b * stride);
    float* o = out + b * N;
    for (int64_t j = 0; j < N; ++j) o[j] = src[j];
  }
}

// Rows are independent in both recurrences, so the batch is split once over the intra-op threads, each running
// the whole time loop on its rows (no synchronisation per step); a chunk has at least this many rows.
constexpr int64_t kRowGrain = 16;

at::Tensor floats(float* p, int64_t rows, int64_t cols) {
  return at::from_blob(p, {rows, cols}, at::TensorOptions().dtype(at::kFloat));
}

// AUGRU (TF GRUCell convention, DIEN's VecAttGRUCell), shapes:
//   x_gates [Bx, L, 2H] input part + bias of the reset and update gates, x_cand [Bx, L, H] of the candidate,
//   Bx = B or 1 (one user's projection shared by its B candidates; a broadcast with row stride 0 is fine);
//   keep [B, L] the part of the update gate that survives (1 - a code form, a paper form);
//   valid [B, L] bool or None (every row valid up to `steps`); w_gates_t [H, 2H], w_cand_t [H, H].
// Per step: r, u = sigmoid(x_g + h W_g); c = tanh(x_c + (r h) W_c); ue = u keep;
//   code: h' = c + ue (h - c); paper: h' = h + ue (c - h); h = h' where valid.
// Returns the state after `steps` steps, [B, H].
at::Tensor augru_infer(const at::Tensor& x_gates, const at::Tensor& x_cand, const at::Tensor& keep,
                       const c10::optional<at::Tensor>& valid, const at::Tensor& w_gates_t,
                       const at::Tensor& w_cand_t, bool paper, int64_t steps) {
  check_cpu_float(x_gates, "x_gates");
  check_cpu_float(x_cand, "x_cand");
  const int64_t B = keep.size(0), L = keep.size(1), H = w_cand_t.size(0);
  TORCH_CHECK(x_gates.size(-1) == 2 * H && x_cand.size(-1) == H && w_gates_t.size(1) == 2 * H,
              "augru_infer: widths do not match the hidden size ", H);
  TORCH_CHECK(x_gates.size(0) == x_cand.size(0) && (x_gates.size(0) == B || x_gates.size(0) == 1),
              "augru_infer: x_gates / x_cand need ", B, " rows or 1");
  TORCH_CHECK(steps <= L && x_gates.size(1) >= steps && x_cand.size(1) >= steps,
              "augru_infer: steps ", steps, " > history length ", L);
  const at::Tensor xg = x_gates.stride(2) == 1 ? x_gates : x_gates.contiguous();  // only the feature dim dense
  const at::Tensor xc = x_cand.stride(2) == 1 ? x_cand : x_cand.contiguous();
  const bool shared = xg.size(0) == 1 || (xg.stride(0) == 0 && xc.stride(0) == 0);
  const at::Tensor k = keep.contiguous();
  const bool masked = valid.has_value() && valid->defined();
  const at::Tensor v = masked ? valid->to(at::kBool).contiguous() : at::Tensor();
  const at::Tensor wg = w_gates_t.contiguous(), wc = w_cand_t.contiguous();
  at::Tensor h = at::zeros({B, H}, x_cand.options());
  const float *xgp = xg.data_ptr<float>(), *xcp = xc.data_ptr<float>(), *kp = k.data_ptr<float>();
  const float *wgp = wg.data_ptr<float>(), *wcp = wc.data_ptr<float>();
  const bool* vp = masked ? v.data_ptr<bool>() : nullptr;
  float* h_all = h.data_ptr<float>();

  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    const int64_t n = b1 - b0;
    at::Tensor g = at::empty({n, 2 * H}, x_cand.options());  // [r | u]
    at::Tensor rh = at::empty({n, H}, x_cand.options());
    at::Tensor c = at::empty({n, H}, x_cand.options());
    float *gp = g.data_ptr<float>(), *rp = rh.data_ptr<float>(), *cp = c.data_ptr<float>();
    float* hp = h_all + b0 * H;
    const float* xg0 = xgp + (shared ? 0 : b0 * xg.stride(0));
    const float* xc0 = xcp + (shared ? 0 : b0 * xc.stride(0));
    for (int64_t t = 0; t < steps; ++t) {
      fill_rows(gp, xg0 + t * xg.stride(1), n, 2 * H, xg.stride(0), shared);
      gemm_rows(n, 2 * H, H, 1.0f, hp, wgp, 1.0f, gp);  // x_g + h W_g
      g.sigmoid_();
      for (int64_t b = 0; b < n; ++b) {
        const float* r = gp + b * 2 * H;
        const float* hb = hp + b * H;
        float* o = rp + b * H;
        for (int64_t j = 0; j < H; ++j) o[j] = r[j] * hb[j];
      }
      fill_rows(cp, xc0 + t * xc.stride(1), n, H, xc.stride(0), shared);
      gemm_rows(n, H, H, 2.0f, rp, wcp, 2.0f, cp);  // 2 z = 2 (x_c + (r h) W_c)
      c.sigmoid_();                                  // tanh(z) = 2 sigmoid(2 z) - 1
      for (int64_t b = 0; b < n; ++b) {
        const int64_t at_t = (b0 + b) * L + t;
        if (vp != nullptr && !vp[at_t]) continue;  // a padded position leaves the state as it is
        const float* u = gp + b * 2 * H + H;
        const float* cb = cp + b * H;
        float* hb = hp + b * H;
        const float kb = kp[at_t];
        if (paper) {
          for (int64_t j = 0; j < H; ++j) {
            const float cc = 2.0f * cb[j] - 1.0f;
            hb[j] = hb[j] + u[j] * kb * (cc - hb[j]);
          }
        } else {
          for (int64_t j = 0; j < H; ++j) {
            const float cc = 2.0f * cb[j] - 1.0f;
            hb[j] = cc + u[j] * kb * (hb[j] - cc);
          }
        }
      }
    }
  });
  return h;
}

// One layer of torch's GRU from a zero state (gate order r, z, n; the reset gate applied after the
// recurrent matmul), shapes: x_proj [B, L, 3H] = x W_ih^T + b_ih, w_hh_t [H, 3H], b_hh [3H].
//   r, z = sigmoid(x_rz + h W_rz + b_rz); n = tanh(x_n + r (h W_n + b_n)); h' = n + z (h - n).
// Returns the states [B, L, H] of the first `steps` positions, zeros after them.
at::Tensor gru_infer(const at::Tensor& x_proj, const at::Tensor& w_hh_t, const at::Tensor& b_hh, int64_t steps) {
  check_cpu_float(x_proj, "x_proj");
  const int64_t B = x_proj.size(0), L = x_proj.size(1), H = w_hh_t.size(0);
  TORCH_CHECK(x_proj.size(2) == 3 * H && w_hh_t.size(1) == 3 * H && b_hh.numel() == 3 * H,
              "gru_infer: widths do not match the hidden size ", H);
  TORCH_CHECK(steps <= L, "gru_infer: steps ", steps, " > sequence length ", L);
  const at::Tensor xp = x_proj.contiguous();
  const at::Tensor w = w_hh_t.contiguous(), bias = b_hh.contiguous();
  at::Tensor states = at::zeros({B, L, H}, x_proj.options());
  const float *xpp = xp.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float* s_all = states.data_ptr<float>();

  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    const int64_t n = b1 - b0;
    at::Tensor h = at::zeros({n, H}, x_proj.options());
    at::Tensor gh = at::empty({n, 3 * H}, x_proj.options());
    at::Tensor rz = at::empty({n, 2 * H}, x_proj.options());
    at::Tensor nt = at::empty({n, H}, x_proj.options());
    float *hp = h.data_ptr<float>(), *ghp = gh.data_ptr<float>(), *rzp = rz.data_ptr<float>();
    float* np_ = nt.data_ptr<float>();
    for (int64_t t = 0; t < steps; ++t) {
      fill_rows(ghp, bp, n, 3 * H, 0, true);
      gemm_rows(n, 3 * H, H, 1.0f, hp, wp, 1.0f, ghp);  // b_hh + h W_hh^T
      for (int64_t b = 0; b < n; ++b) {
        const float* x = xpp + ((b0 + b) * L + t) * 3 * H;
        const float* y = ghp + b * 3 * H;
        float* o = rzp + b * 2 * H;
        for (int64_t j = 0; j < 2 * H; ++j) o[j] = x[j] + y[j];
      }
      rz.sigmoid_();
      for (int64_t b = 0; b < n; ++b) {
        const float* x = xpp + ((b0 + b) * L + t) * 3 * H + 2 * H;
        const float* y = ghp + b * 3 * H + 2 * H;
        const float* r = rzp + b * 2 * H;
        float* o = np_ + b * H;
        for (int64_t j = 0; j < H; ++j) o[j] = 2.0f * (x[j] + r[j] * y[j]);
      }
      nt.sigmoid_();  // tanh(z) = 2 sigmoid(2 z) - 1
      for (int64_t b = 0; b < n; ++b) {
        const float* z = rzp + b * 2 * H + H;
        const float* nb = np_ + b * H;
        float* hb = hp + b * H;
        float* s = s_all + ((b0 + b) * L + t) * H;
        for (int64_t j = 0; j < H; ++j) {
          const float nn = 2.0f * nb[j] - 1.0f;
          hb[j] = nn + z[j] * (hb[j] - nn);
          s[j] = hb[j];
        }
      }
    }
  });
  return states;
}

}  // namespace

TORCH_LIBRARY(canctr_cpu, m) {
  m.def("augru_infer(Tensor x_gates, Tensor x_cand, Tensor keep, Tensor? valid, Tensor w_gates_t, "
        "Tensor w_cand_t, bool paper, int steps) -> Tensor", &augru_infer);
  m.def("gru_infer(Tensor x_proj, Tensor w_hh_t, Tensor b_hh, int steps) -> Tensor", &gru_infer);
}
