// DIEN's two recurrences on the CPU (float32), the whole time loop in one call: the extractor GRU and the AUGRU,
// forward for scoring, forward with saved states and backward (BPTT) for training.
//
// At scoring size (one user: the extractor GRU at batch 1, the AUGRU at 100 candidates, hidden 36) and at training
// batch 128 a time step is a few microseconds of arithmetic, so a Python loop of a dozen tensor calls per step
// spends most of its time in the calls themselves. Here a step is a direct BLAS call for the recurrent product,
// ATen's vectorised sigmoid for the gates, and plain loops the compiler vectorises; tanh is taken as
// 2 sigmoid(2z) - 1 (torch's CPU tanh is several times slower than its sigmoid). The Python references are in
// canctr/layers/sequence.py (`_augru_infer_reference`, `_AUGRUScan`, torch's nn.GRU); tests hold these to them.
// Built on first use by torch.utils.cpp_extension (canctr/layers/compiled.py).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

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

// p[rows, cols] <- sigmoid(p) with ATen's vectorised kernel: through `buf` when p is that buffer (the scoring
// passes), else a tensor over p made here (a slice of a saved tensor; making it costs ~0.2 us a step)
void sigmoid_rows(at::Tensor& buf, float* p, int64_t rows, int64_t cols) {
  if (buf.defined()) {
    buf.sigmoid_();
  } else {
    at::from_blob(p, {rows, cols}, at::TensorOptions().dtype(at::kFloat)).sigmoid_();
  }
}

// AUGRU forward (TF GRUCell convention, DIEN's VecAttGRUCell), shapes:
//   x_gates [Bx, L, 2H] input part + bias of the reset and update gates, x_cand [Bx, L, H] of the candidate,
//   Bx = B or 1 (one user's projection shared by its B candidates; a broadcast with row stride 0 is fine);
//   keep [B, L] the part of the update gate that survives (1 - a code form, a paper form);
//   valid [B, L] bool or None (every row valid up to `steps`); w_gates_t [H, 2H], w_cand_t [H, H].
// Per step: r, u = sigmoid(x_g + h W_g); c = tanh(x_c + (r h) W_c); ue = u keep;
//   code: h' = c + ue (h - c); paper: h' = h + ue (c - h); h = h' where valid.
// Returns the state after `steps` steps [B, H] and, with `save` (training), what the backward needs,
// time-major [steps, B, .]: hs (the state before each step), gs (r | u), cs (the tanh candidate); without,
// the gates and the candidate live in one buffer per thread and the three are undefined.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> augru_forward(
    const at::Tensor& x_gates, const at::Tensor& x_cand, const at::Tensor& keep,
    const c10::optional<at::Tensor>& valid, const at::Tensor& w_gates_t, const at::Tensor& w_cand_t, bool paper,
    int64_t steps, bool save) {
  check_cpu_float(x_gates, "x_gates");
  check_cpu_float(x_cand, "x_cand");
  const int64_t B = keep.size(0), L = keep.size(1), H = w_cand_t.size(0);
  TORCH_CHECK(x_gates.size(-1) == 2 * H && x_cand.size(-1) == H && w_gates_t.size(1) == 2 * H,
              "augru: widths do not match the hidden size ", H);
  TORCH_CHECK(x_gates.size(0) == x_cand.size(0) && (x_gates.size(0) == B || x_gates.size(0) == 1),
              "augru: x_gates / x_cand need ", B, " rows or 1");
  TORCH_CHECK(steps <= L && x_gates.size(1) >= steps && x_cand.size(1) >= steps,
              "augru: steps ", steps, " > history length ", L);
  const at::Tensor xg = x_gates.stride(2) == 1 ? x_gates : x_gates.contiguous();  // only the feature dim dense
  const at::Tensor xc = x_cand.stride(2) == 1 ? x_cand : x_cand.contiguous();
  const bool shared = xg.size(0) == 1 || (xg.stride(0) == 0 && xc.stride(0) == 0);
  const at::Tensor k = keep.contiguous();
  const bool masked = valid.has_value() && valid->defined();
  const at::Tensor v = masked ? valid->to(at::kBool).contiguous() : at::Tensor();
  const at::Tensor wg = w_gates_t.contiguous(), wc = w_cand_t.contiguous();
  const auto opt = x_cand.options();
  at::Tensor h = at::zeros({B, H}, opt), hs, gs, cs;
  if (save) {
    hs = at::empty({steps, B, H}, opt);
    gs = at::empty({steps, B, 2 * H}, opt);
    cs = at::empty({steps, B, H}, opt);
  }
  const float *xgp = xg.data_ptr<float>(), *xcp = xc.data_ptr<float>(), *kp = k.data_ptr<float>();
  const float *wgp = wg.data_ptr<float>(), *wcp = wc.data_ptr<float>();
  const bool* vp = masked ? v.data_ptr<bool>() : nullptr;
  float* h_all = h.data_ptr<float>();

  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    const int64_t n = b1 - b0;
    at::Tensor g_buf, c_buf;  // a step's gates and candidate when nothing is saved
    if (!save) {
      g_buf = at::empty({n, 2 * H}, opt);
      c_buf = at::empty({n, H}, opt);
    }
    at::Tensor rh = at::empty({n, H}, opt);
    float* rp = rh.data_ptr<float>();
    float* hp = h_all + b0 * H;
    const float* xg0 = xgp + (shared ? 0 : b0 * xg.stride(0));
    const float* xc0 = xcp + (shared ? 0 : b0 * xc.stride(0));
    // saved: this chunk's rows at step 0, one step further on every step; else the same buffer each step
    float* g0 = save ? gs.data_ptr<float>() + b0 * 2 * H : g_buf.data_ptr<float>();
    float* c0 = save ? cs.data_ptr<float>() + b0 * H : c_buf.data_ptr<float>();
    float* hs0 = save ? hs.data_ptr<float>() + b0 * H : nullptr;
    const int64_t g_step = save ? B * 2 * H : 0, c_step = save ? B * H : 0;
    for (int64_t t = 0; t < steps; ++t) {
      float* gp = g0 + t * g_step;
      float* cp = c0 + t * c_step;
      if (save) {
        float* hsp = hs0 + t * B * H;
        for (int64_t i = 0; i < n * H; ++i) hsp[i] = hp[i];
      }
      fill_rows(gp, xg0 + t * xg.stride(1), n, 2 * H, xg.stride(0), shared);
      gemm_rows(n, 2 * H, H, 1.0f, hp, wgp, 1.0f, gp);  // x_g + h W_g
      sigmoid_rows(g_buf, gp, n, 2 * H);
      for (int64_t b = 0; b < n; ++b)
        for (int64_t j = 0; j < H; ++j) rp[b * H + j] = gp[b * 2 * H + j] * hp[b * H + j];
      fill_rows(cp, xc0 + t * xc.stride(1), n, H, xc.stride(0), shared);
      gemm_rows(n, H, H, 2.0f, rp, wcp, 2.0f, cp);  // 2 z = 2 (x_c + (r h) W_c)
      sigmoid_rows(c_buf, cp, n, H);                 // tanh(z) = 2 sigmoid(2 z) - 1
      for (int64_t b = 0; b < n; ++b) {
        const int64_t at_t = (b0 + b) * L + t;
        float* cb = cp + b * H;
        for (int64_t j = 0; j < H; ++j) cb[j] = 2.0f * cb[j] - 1.0f;
        if (vp != nullptr && !vp[at_t]) continue;  // a padded position leaves the state as it is
        const float* u = gp + b * 2 * H + H;
        float* hb = hp + b * H;
        const float kb = kp[at_t];
        if (paper) {
          for (int64_t j = 0; j < H; ++j) hb[j] = hb[j] + u[j] * kb * (cb[j] - hb[j]);
        } else {
          for (int64_t j = 0; j < H; ++j) hb[j] = cb[j] + u[j] * kb * (hb[j] - cb[j]);
        }
      }
    }
  });
  return {h, hs, gs, cs};
}

at::Tensor augru_infer(const at::Tensor& x_gates, const at::Tensor& x_cand, const at::Tensor& keep,
                       const c10::optional<at::Tensor>& valid, const at::Tensor& w_gates_t,
                       const at::Tensor& w_cand_t, bool paper, int64_t steps) {
  return std::get<0>(augru_forward(x_gates, x_cand, keep, valid, w_gates_t, w_cand_t, paper, steps, false));
}

// w_gates [2H, H] and w_cand [H, H] in nn.Linear layout, as the backward takes them
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> augru_train_forward(
    const at::Tensor& x_gates, const at::Tensor& x_cand, const at::Tensor& keep, const at::Tensor& valid,
    const at::Tensor& w_gates, const at::Tensor& w_cand, bool paper, int64_t steps) {
  return augru_forward(x_gates, x_cand, keep, valid, w_gates.t(), w_cand.t(), paper, steps, true);
}

// One layer of torch's GRU from a zero state (gate order r, z, n; the reset gate applied after the
// recurrent matmul), shapes: x_proj [B, L, 3H] = x W_ih^T + b_ih, w_hh_t [H, 3H], b_hh [3H].
//   r, z = sigmoid(x_rz + h W_rz + b_rz); n = tanh(x_n + r (h W_n + b_n)); h' = n + z (h - n).
// Returns the states [L, B, H], time-major (zeros at steps >= `steps`), and with `save` (training) per step rz
// (after the sigmoid), n (after the tanh) and the recurrent part of n before the reset gate, ghn:
// [steps, B, .]; without, those live in one buffer per thread and are undefined.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& x_proj, const at::Tensor& w_hh_t, const at::Tensor& b_hh, int64_t steps, bool save) {
  check_cpu_float(x_proj, "x_proj");
  const int64_t B = x_proj.size(0), L = x_proj.size(1), H = w_hh_t.size(0);
  TORCH_CHECK(x_proj.size(2) == 3 * H && w_hh_t.size(1) == 3 * H && b_hh.numel() == 3 * H,
              "gru: widths do not match the hidden size ", H);
  TORCH_CHECK(steps <= L, "gru: steps ", steps, " > sequence length ", L);
  const at::Tensor xp = x_proj.contiguous(), w = w_hh_t.contiguous(), bias = b_hh.contiguous();
  const auto opt = x_proj.options();
  at::Tensor states = at::zeros({L, B, H}, opt), rz, nn_, ghn;
  if (save) {
    rz = at::empty({steps, B, 2 * H}, opt);
    nn_ = at::empty({steps, B, H}, opt);
    ghn = at::empty({steps, B, H}, opt);
  }
  const float *xpp = xp.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float* s_all = states.data_ptr<float>();

  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    const int64_t n = b1 - b0;
    at::Tensor h0 = at::zeros({n, H}, opt), gh_t = at::empty({n, 3 * H}, opt), rz_buf, n_buf;
    if (!save) {
      rz_buf = at::empty({n, 2 * H}, opt);
      n_buf = at::empty({n, H}, opt);
    }
    float* gh = gh_t.data_ptr<float>();
    const float* hp = h0.data_ptr<float>();  // the previous state: zeros, then the states written
    float* rz0 = save ? rz.data_ptr<float>() + b0 * 2 * H : rz_buf.data_ptr<float>();
    float* n0 = save ? nn_.data_ptr<float>() + b0 * H : n_buf.data_ptr<float>();
    float* ghn0 = save ? ghn.data_ptr<float>() + b0 * H : nullptr;
    const int64_t rz_step = save ? B * 2 * H : 0, n_step = save ? B * H : 0;
    for (int64_t t = 0; t < steps; ++t) {
      float* rzp = rz0 + t * rz_step;
      float* np_ = n0 + t * n_step;
      float* sp = s_all + (t * B + b0) * H;
      fill_rows(gh, bp, n, 3 * H, 0, true);
      gemm_rows(n, 3 * H, H, 1.0f, hp, wp, 1.0f, gh);  // b_hh + h W_hh^T
      for (int64_t b = 0; b < n; ++b) {
        const float* x = xpp + ((b0 + b) * L + t) * 3 * H;
        for (int64_t j = 0; j < 2 * H; ++j) rzp[b * 2 * H + j] = x[j] + gh[b * 3 * H + j];
      }
      sigmoid_rows(rz_buf, rzp, n, 2 * H);
      for (int64_t b = 0; b < n; ++b) {
        const float* x = xpp + ((b0 + b) * L + t) * 3 * H + 2 * H;
        for (int64_t j = 0; j < H; ++j) np_[b * H + j] = 2.0f * (x[j] + rzp[b * 2 * H + j] * gh[b * 3 * H + 2 * H + j]);
      }
      if (save) {
        float* gnp = ghn0 + t * B * H;
        for (int64_t b = 0; b < n; ++b)
          for (int64_t j = 0; j < H; ++j) gnp[b * H + j] = gh[b * 3 * H + 2 * H + j];
      }
      sigmoid_rows(n_buf, np_, n, H);  // tanh(z) = 2 sigmoid(2 z) - 1
      for (int64_t b = 0; b < n; ++b)
        for (int64_t j = 0; j < H; ++j) {
          const int64_t i = b * H + j;
          const float nv = 2.0f * np_[i] - 1.0f, z = rzp[b * 2 * H + H + j];
          np_[i] = nv;
          sp[i] = nv + z * (hp[i] - nv);
        }
      hp = sp;
    }
  });
  return {states, rz, nn_, ghn};
}

// the states [B, L, H], batch-major as the model reads them
at::Tensor gru_infer(const at::Tensor& x_proj, const at::Tensor& w_hh_t, const at::Tensor& b_hh, int64_t steps) {
  return std::get<0>(gru_forward(x_proj, w_hh_t, b_hh, steps, false)).transpose(0, 1).contiguous();
}

// w_hh [3H, H] in nn.GRU's layout, as the backward takes it
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_train_forward(
    const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& b_hh, int64_t steps) {
  return gru_forward(x_proj, w_hh.t(), b_hh, steps, true);
}

// ---- training: the backward passes (BPTT) of the forward passes above run with `save` ----
// Saved tensors are time-major ([steps, B, .]) so that a chunk's rows at one step are one dense block; the
// recurrent weights' gradients are left to one matmul over every (step, row) in Python.

// AUGRU backward: grad_h [B, H] and the saved tensors -> d_gates [L, B, 2H] (the input part of r, u before the
// sigmoid), d_cand [L, B, H] (of c before the tanh), d_keep [L, B]; zeros at steps >= `steps`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> augru_train_backward(
    const at::Tensor& grad_h, const at::Tensor& hs, const at::Tensor& gs, const at::Tensor& cs, const at::Tensor& keep,
    const at::Tensor& valid, const at::Tensor& w_gates, const at::Tensor& w_cand, bool paper, int64_t L) {
  const int64_t steps = hs.size(0), B = hs.size(1), H = hs.size(2);
  const at::Tensor gh = grad_h.contiguous(), k = keep.contiguous(), v = valid.to(at::kBool).contiguous();
  const at::Tensor wg = w_gates.contiguous(), wc = w_cand.contiguous();
  const auto opt = hs.options();
  at::Tensor d_gates = at::zeros({L, B, 2 * H}, opt), d_cand = at::zeros({L, B, H}, opt);
  at::Tensor d_keep = at::zeros({L, B}, opt);
  const float *ghp = gh.data_ptr<float>(), *kp = k.data_ptr<float>(), *wgp = wg.data_ptr<float>();
  const float *wcp = wc.data_ptr<float>(), *hs_all = hs.data_ptr<float>(), *gs_all = gs.data_ptr<float>();
  const float* cs_all = cs.data_ptr<float>();
  const bool* vp = v.data_ptr<bool>();
  float *dg_all = d_gates.data_ptr<float>(), *dc_all = d_cand.data_ptr<float>(), *dk_all = d_keep.data_ptr<float>();
  const int64_t Lk = k.size(1);

  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    const int64_t n = b1 - b0;
    at::Tensor dh_t = at::empty({n, H}, opt), due_t = at::empty({n, H}, opt), drh_t = at::empty({n, H}, opt);
    float *dh = dh_t.data_ptr<float>(), *due = due_t.data_ptr<float>(), *drh = drh_t.data_ptr<float>();
    for (int64_t i = 0; i < n * H; ++i) dh[i] = ghp[b0 * H + i];
    for (int64_t t = steps - 1; t >= 0; --t) {
      const float* hp = hs_all + (t * B + b0) * H;
      const float* gp = gs_all + (t * B + b0) * 2 * H;
      const float* cp = cs_all + (t * B + b0) * H;
      float* dgp = dg_all + (t * B + b0) * 2 * H;
      float* dcp = dc_all + (t * B + b0) * H;
      for (int64_t b = 0; b < n; ++b) {
        const int64_t at_t = (b0 + b) * Lk + t;
        const float kb = kp[at_t];
        const float on = vp[at_t] ? 1.0f : 0.0f;
        float acc = 0.0f;
        for (int64_t j = 0; j < H; ++j) {
          const int64_t i = b * H + j;
          const float u = gp[b * 2 * H + H + j], c = cp[i], h = hp[i];
          const float dn = dh[i] * on, ue = u * kb;
          float d_ue, dc;
          if (paper) {  // h' = h + ue (c - h)
            d_ue = dn * (c - h);
            dc = dn * ue;
            dh[i] = dh[i] - dn * ue;
          } else {  // h' = c + ue (h - c)
            d_ue = dn * (h - c);
            dc = dn - dn * ue;
            dh[i] = dh[i] - dn + dn * ue;
          }
          acc += d_ue * u;
          due[i] = d_ue;
          dcp[i] = dc * (1.0f - c * c);
        }
        dk_all[t * B + b0 + b] = acc;
      }
      gemm_rows(n, H, H, 1.0f, dcp, wcp, 0.0f, drh);  // d(r h) = d_cand W_c
      for (int64_t b = 0; b < n; ++b) {
        const float kb = kp[(b0 + b) * Lk + t];
        for (int64_t j = 0; j < H; ++j) {
          const int64_t i = b * H + j;
          const float r = gp[b * 2 * H + j], u = gp[b * 2 * H + H + j];
          dgp[b * 2 * H + j] = drh[i] * hp[i] * r * (1.0f - r);
          dgp[b * 2 * H + H + j] = due[i] * kb * u * (1.0f - u);
          dh[i] += drh[i] * r;
        }
      }
      gemm_rows(n, H, 2 * H, 1.0f, dgp, wgp, 1.0f, dh);  // + d_gates W_g
    }
  });
  return {d_gates, d_cand, d_keep};
}

// GRU backward: d_states [B, L, H] (any strides) and the saved tensors -> d_xproj [L, B, 3H] (zeros at steps >=
// `steps`) and d_gh [steps, B, 3H], the gradient of b_hh + h W_hh^T at each step.
std::tuple<at::Tensor, at::Tensor> gru_train_backward(const at::Tensor& d_states, const at::Tensor& states,
                                                      const at::Tensor& rz, const at::Tensor& n_saved,
                                                      const at::Tensor& ghn, const at::Tensor& w_hh) {
  const int64_t steps = rz.size(0), B = rz.size(1), H = ghn.size(2), L = states.size(0);
  const at::Tensor ds = d_states.contiguous(), w = w_hh.contiguous();
  const auto opt = rz.options();
  at::Tensor d_xproj = at::zeros({L, B, 3 * H}, opt), d_gh = at::empty({steps, B, 3 * H}, opt);
  const float *dsp = ds.data_ptr<float>(), *wp = w.data_ptr<float>(), *s_all = states.data_ptr<float>();
  const float *rz_all = rz.data_ptr<float>(), *n_all = n_saved.data_ptr<float>(), *ghn_all = ghn.data_ptr<float>();
  float *dx_all = d_xproj.data_ptr<float>(), *dgh_all = d_gh.data_ptr<float>();
  const int64_t Ld = ds.size(1);

  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    const int64_t n = b1 - b0;
    at::Tensor dh_t = at::zeros({n, H}, opt);
    float* dh = dh_t.data_ptr<float>();
    for (int64_t t = steps - 1; t >= 0; --t) {
      const float* rzp = rz_all + (t * B + b0) * 2 * H;
      const float* np_ = n_all + (t * B + b0) * H;
      const float* gnp = ghn_all + (t * B + b0) * H;
      const float* prev = t > 0 ? s_all + ((t - 1) * B + b0) * H : nullptr;
      float* dxp = dx_all + (t * B + b0) * 3 * H;
      float* dgp = dgh_all + (t * B + b0) * 3 * H;
      for (int64_t b = 0; b < n; ++b) {
        const float* d_out = dsp + ((b0 + b) * Ld + t) * H;
        for (int64_t j = 0; j < H; ++j) {
          const int64_t i = b * H + j;
          const float d = dh[i] + d_out[j];
          const float r = rzp[b * 2 * H + j], z = rzp[b * 2 * H + H + j], nv = np_[i];
          const float hprev = prev != nullptr ? prev[i] : 0.0f;
          const float dpn = d * (1.0f - z) * (1.0f - nv * nv);  // through h' = n + z (h - n) and the tanh
          const float dpr = dpn * gnp[i] * r * (1.0f - r);
          const float dpz = d * (hprev - nv) * z * (1.0f - z);
          dxp[b * 3 * H + j] = dpr;
          dxp[b * 3 * H + H + j] = dpz;
          dxp[b * 3 * H + 2 * H + j] = dpn;
          dgp[b * 3 * H + j] = dpr;
          dgp[b * 3 * H + H + j] = dpz;
          dgp[b * 3 * H + 2 * H + j] = dpn * r;
          dh[i] = d * z;
        }
      }
      gemm_rows(n, H, 3 * H, 1.0f, dgp, wp, 1.0f, dh);  // + d_gh W_hh
    }
  });
  return {d_xproj, d_gh};
}

}  // namespace

TORCH_LIBRARY(canctr_cpu, m) {
  m.def("augru_infer(Tensor x_gates, Tensor x_cand, Tensor keep, Tensor? valid, Tensor w_gates_t, "
        "Tensor w_cand_t, bool paper, int steps) -> Tensor", &augru_infer);
  m.def("gru_infer(Tensor x_proj, Tensor w_hh_t, Tensor b_hh, int steps) -> Tensor", &gru_infer);
  m.def("augru_train_forward(Tensor x_gates, Tensor x_cand, Tensor keep, Tensor valid, Tensor w_gates, "
        "Tensor w_cand, bool paper, int steps) -> (Tensor, Tensor, Tensor, Tensor)", &augru_train_forward);
  m.def("augru_train_backward(Tensor grad_h, Tensor hs, Tensor gs, Tensor cs, Tensor keep, Tensor valid, "
        "Tensor w_gates, Tensor w_cand, bool paper, int L) -> (Tensor, Tensor, Tensor)", &augru_train_backward);
  m.def("gru_train_forward(Tensor x_proj, Tensor w_hh, Tensor b_hh, int steps) -> (Tensor, Tensor, Tensor, Tensor)",
        &gru_train_forward);
  m.def("gru_train_backward(Tensor d_states, Tensor states, Tensor rz, Tensor n, Tensor ghn, Tensor w_hh) "
        "-> (Tensor, Tensor)", &gru_train_backward);
}
