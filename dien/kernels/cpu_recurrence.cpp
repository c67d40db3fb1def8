// The time loops of the CPU backend (dien/kernels/cpu.py), fused: per step one GEMM for the three recurrent gates
// and one pass over [rows, H] for all the gate math. Rows are split across the intra-op threads, each running
// its own rows through all steps, so the loops synchronize nothing. float32, contiguous tensors.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Each thread takes at least this many rows: below it a second thread costs more than it saves.
constexpr int64_t kRowGrain = 16;

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

}  // namespace

// gi [T, B, 3H]: input projections (b_ih included); att [T, B], or empty for the GRU; h0 [B, H];
// w_hh [3H, H]; b_hh [3H].
// Returns states [T + 1, B, H] (states[t] is the state before step t) and gates [T, B, 4H]: r, z, n and
// W_hn h + b_hn of every step.
std::vector<at::Tensor> forward(const at::Tensor& gi, const at::Tensor& att, const at::Tensor& h0,
                                const at::Tensor& w_hh, const at::Tensor& b_hh) {
  const int64_t T = gi.size(0), B = gi.size(1), H3 = gi.size(2), H = H3 / 3;
  auto states = at::empty({T + 1, B, H}, gi.options());
  auto gates = at::empty({T, B, 4 * H}, gi.options());
  states[0].copy_(h0);
  const bool has_att = att.numel() > 0;
  const at::Tensor w_t = w_hh.t();
  const float* bias = b_hh.data_ptr<float>();
  const float* gi_data = gi.data_ptr<float>();
  const float* att_data = has_att ? att.data_ptr<float>() : nullptr;
  float* states_data = states.data_ptr<float>();
  float* gates_data = gates.data_ptr<float>();
  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    at::NoGradGuard no_grad;  // grad mode is thread-local, and the pool's threads have it on
    const int64_t rows = b1 - b0;
    auto gh = at::empty({rows, H3}, gi.options());
    const float* gh_data = gh.data_ptr<float>();
    for (int64_t t = 0; t < T; ++t) {
      at::mm_out(gh, states[t].narrow(0, b0, rows), w_t);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t row = t * B + b0 + i;
        const float* x = gi_data + row * H3;
        const float* g = gh_data + i * H3;
        const float* h = states_data + row * H;
        float* h_next = states_data + (row + B) * H;
        float* saved = gates_data + row * 4 * H;
        // AUGRU: u = a (1 - z); the GRU is a = 1. Steps past a row's length run too: they change neither its
        // outputs nor its last state (sequences are left-aligned), and the caller masks and gathers those.
        const float a = has_att ? att_data[row] : 1.f;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const float r = sigmoid(x[j] + g[j] + bias[j]);
          const float z = sigmoid(x[H + j] + g[H + j] + bias[H + j]);
          const float hn = g[2 * H + j] + bias[2 * H + j];
          const float n = 2.f * sigmoid(2.f * (x[2 * H + j] + r * hn)) - 1.f;  // tanh
          saved[j] = r;
          saved[H + j] = z;
          saved[2 * H + j] = n;
          saved[3 * H + j] = hn;
          h_next[j] = h[j] + a * (1.f - z) * (n - h[j]);
        }
      }
    }
  });
  return {states, gates};
}

// gates [T, B, 4H] and states [T + 1, B, H] from forward; att [T, B] or empty; injected [T, B, H]: the gradient
// the outputs send to the state after each step; w_hh [3H, H].
// Returns the gradients of the hidden projections [T, B, 3H] (gate order r, z, n), of the input projection of
// n [T, B, H] (r and z are the hidden ones), of att [T, B] (empty for the GRU) and of h0 [B, H].
std::vector<at::Tensor> backward(const at::Tensor& gates, const at::Tensor& states, const at::Tensor& att,
                                 const at::Tensor& injected, const at::Tensor& w_hh) {
  const int64_t T = gates.size(0), B = gates.size(1), H = gates.size(2) / 4, H3 = 3 * H;
  auto grad_gh = at::empty({T, B, H3}, gates.options());
  auto grad_gi_n = at::empty({T, B, H}, gates.options());
  const bool has_att = att.numel() > 0;
  auto grad_att = at::empty({has_att ? T : 0, B}, gates.options());
  auto grad_h0 = at::empty({B, H}, gates.options());
  const float* gates_data = gates.data_ptr<float>();
  const float* states_data = states.data_ptr<float>();
  const float* injected_data = injected.data_ptr<float>();
  const float* att_data = has_att ? att.data_ptr<float>() : nullptr;
  float* grad_gh_data = grad_gh.data_ptr<float>();
  float* grad_gi_n_data = grad_gi_n.data_ptr<float>();
  float* grad_att_data = has_att ? grad_att.data_ptr<float>() : nullptr;
  at::parallel_for(0, B, kRowGrain, [&](int64_t b0, int64_t b1) {
    at::NoGradGuard no_grad;
    const int64_t rows = b1 - b0;
    auto dh = at::zeros({rows, H}, gates.options());  // gradient of the state after step t, from later steps
    auto carried = at::empty({rows, H}, gates.options());
    float* dh_data = dh.data_ptr<float>();
    float* carried_data = carried.data_ptr<float>();
    for (int64_t t = T - 1; t >= 0; --t) {
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t row = t * B + b0 + i;
        const float* saved = gates_data + row * 4 * H;
        const float* h = states_data + row * H;
        const float* inj = injected_data + row * H;
        const float* later = dh_data + i * H;
        float* d_gh = grad_gh_data + row * H3;
        float* d_gi_n = grad_gi_n_data + row * H;
        float* carry = carried_data + i * H;
        const float a = has_att ? att_data[row] : 1.f;
        float d_att = 0.f;
#pragma omp simd reduction(+ : d_att)
        for (int64_t j = 0; j < H; ++j) {
          const float r = saved[j], z = saved[H + j], n = saved[2 * H + j], hn = saved[3 * H + j];
          const float d = later[j] + inj[j];
          const float u = a * (1.f - z);
          const float diff = n - h[j];
          const float d_n = d * u * (1.f - n * n);  // of n's pre-activation
          d_gh[j] = d_n * hn * r * (1.f - r);
          d_gh[H + j] = -d * a * diff * z * (1.f - z);
          d_gh[2 * H + j] = d_n * r;
          d_gi_n[j] = d_n;
          d_att += d * diff * (1.f - z);
          carry[j] = d * (1.f - u);
        }
        if (has_att) grad_att_data[row] = d_att;
      }
      at::addmm_out(dh, carried, grad_gh[t].narrow(0, b0, rows), w_hh);
    }
    grad_h0.narrow(0, b0, rows).copy_(dh);
  });
  return {grad_gh, grad_gi_n, grad_att, grad_h0};
}

// Inference only: the state after each row's last valid step, nothing saved. Rows are sorted by length and run in
// blocks of kBlockRows; each block runs only to its longest row (a row past its own length is left alone), one
// GEMM a step for the block's recurrent gates and the gate math fused after it, with everything the block touches
// small enough to stay in cache.
// gi [R, T, 3H]: input projections per source row (b_ih included), read through rows_of [B] (row b uses
// gi[rows_of[b]], so rows that share a history share its projections without a copy); att [B, T] or empty;
// lengths [B]; h0 [B, H] or empty (zeros); w_hh [3H, H]; b_hh [3H]. Returns h_last [B, H].
at::Tensor forward_last(const at::Tensor& gi, const at::Tensor& rows_of, const at::Tensor& att,
                        const at::Tensor& lengths, const at::Tensor& h0, const at::Tensor& w_hh,
                        const at::Tensor& b_hh) {
  constexpr int64_t kBlockRows = 128;
  const int64_t T = gi.size(1), H3 = gi.size(2), H = H3 / 3, B = rows_of.size(0);
  auto h_last = h0.numel() > 0 ? h0.clone() : at::zeros({B, H}, gi.options());
  const at::Tensor order = std::get<1>(lengths.clamp_max(T).sort(/*stable=*/false, /*dim=*/0, /*descending=*/true));
  const at::Tensor w_t = w_hh.t();
  const float* bias = b_hh.data_ptr<float>();
  const float* gi_data = gi.data_ptr<float>();
  const int64_t* source = rows_of.data_ptr<int64_t>();
  const int64_t* length = lengths.data_ptr<int64_t>();
  const int64_t* sorted = order.data_ptr<int64_t>();
  const bool has_att = att.numel() > 0;
  const float* att_data = has_att ? att.data_ptr<float>() : nullptr;
  float* out = h_last.data_ptr<float>();
  const int64_t blocks = (B + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
    at::NoGradGuard no_grad;
    auto h = at::empty({kBlockRows, H}, gi.options());
    auto gh = at::empty({kBlockRows, H3}, gi.options());
    float* h_data = h.data_ptr<float>();
    const float* gh_data = gh.data_ptr<float>();
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t first = k * kBlockRows, rows = std::min(kBlockRows, B - first);
      const int64_t* members = sorted + first;
      for (int64_t i = 0; i < rows; ++i) std::copy_n(out + members[i] * H, H, h_data + i * H);
      const int64_t steps = std::min(length[members[0]], T);  // the block's longest row comes first
      auto h_block = h.narrow(0, 0, rows), gh_block = gh.narrow(0, 0, rows);
      for (int64_t t = 0; t < steps; ++t) {
        at::mm_out(gh_block, h_block, w_t);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t b = members[i];
          if (t >= length[b]) continue;
          const float* x = gi_data + (source[b] * T + t) * H3;
          const float* g = gh_data + i * H3;
          float* state = h_data + i * H;
          const float a = has_att ? att_data[b * T + t] : 1.f;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            const float r = sigmoid(x[j] + g[j] + bias[j]);
            const float z = sigmoid(x[H + j] + g[H + j] + bias[H + j]);
            const float n = 2.f * sigmoid(2.f * (x[2 * H + j] + r * (g[2 * H + j] + bias[2 * H + j]))) - 1.f;
            state[j] += a * (1.f - z) * (n - state[j]);
          }
        }
      }
      for (int64_t i = 0; i < rows; ++i) std::copy_n(h_data + i * H, H, out + members[i] * H);
    }
  });
  return h_last;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "GRU/AUGRU forward time loop");
  m.def("forward_last", &forward_last, "GRU/AUGRU final states, inference only");
  m.def("backward", &backward, "GRU/AUGRU backward time loop");
}
