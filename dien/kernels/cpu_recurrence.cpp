// The time loops of the CPU backend (dien/kernels/cpu.py), fused, over packed sequences: rows sorted by length,
// longest first, and step t holding only the batch_sizes[t] rows still running, so a batch costs its total length,
// not rows x T. Per step one GEMM for the running rows' three recurrent gates and one pass for all the gate math.
// Rows are split across the intra-op threads in contiguous ranges of equal total length, each thread running its
// rows through all their steps, so the loops synchronize nothing. float32, contiguous tensors.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Each thread takes at least this many rows: below it a second thread costs more than it saves.
constexpr int64_t kRowGrain = 16;

// Steps whose running rows times H are at most this compute their recurrent gates in the loop below: a GEMM call's
// dispatch costs microseconds, more than the arithmetic of a few rows (a served request's history is one row). Measured
// against the GEMM on one thread: ahead up to 13 rows at H = 32 and 4 rows at H = 108.
constexpr int64_t kFewRowsTimesHidden = 432;

inline bool few_rows(int64_t rows, int64_t H) { return rows * H <= kFewRowsTimesHidden; }

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// gh [kRows, 3H] = h [kRows, H] w_hh^T from w_cols = w_hh^T [H, 3H] row-major: each h[i, k] scales a contiguous
// row of w_cols into gh's row i, so the loop vectorizes over the 3H outputs with no horizontal sums (dot products
// over k were slower than the GEMM at H = 108), and the kRows rows share each load of w_cols.
template <int kRows>
void scale_rows_of_w_cols(const float* h, const float* w_cols, int64_t H, float* gh) {
  const int64_t H3 = 3 * H;
  std::fill_n(gh, kRows * H3, 0.f);
  for (int64_t k = 0; k < H; ++k) {
    const float* w = w_cols + k * H3;
    float s[kRows];
    for (int i = 0; i < kRows; ++i) s[i] = h[i * H + k];
#pragma omp simd
    for (int64_t o = 0; o < H3; ++o) {
      const float w_o = w[o];
      for (int i = 0; i < kRows; ++i) gh[i * H3 + o] += s[i] * w_o;
    }
  }
}

// gh [rows, 3H] = h [rows, H] w_hh^T for a few rows, two at a time; w_cols = w_hh^T [H, 3H] row-major.
void recurrent_gates_of_few_rows(const float* h, int64_t rows, const float* w_cols, int64_t H, float* gh) {
  int64_t i = 0;
  for (; i + 2 <= rows; i += 2) scale_rows_of_w_cols<2>(h + i * H, w_cols, H, gh + i * 3 * H);
  if (i < rows) scale_rows_of_w_cols<1>(h + i * H, w_cols, H, gh + i * 3 * H);
}

// Packed row of (step t, sorted row 0) for every t: offsets[t] = batch_sizes[0] + ... + batch_sizes[t - 1].
std::vector<int64_t> step_offsets(const at::Tensor& batch_sizes) {
  const int64_t T = batch_sizes.size(0);
  const int64_t* sizes = batch_sizes.data_ptr<int64_t>();
  std::vector<int64_t> offsets(T + 1, 0);
  for (int64_t t = 0; t < T; ++t) offsets[t + 1] = offsets[t] + sizes[t];
  return offsets;
}

// Bounds of `parts` contiguous row ranges of about equal total length (rows sorted longest first), each at least
// kRowGrain rows where there are enough: bounds[p] .. bounds[p + 1] is part p.
std::vector<int64_t> balanced_rows(const at::Tensor& batch_sizes, int64_t rows) {
  const int64_t T = batch_sizes.size(0);
  const int64_t* sizes = batch_sizes.data_ptr<int64_t>();
  std::vector<int64_t> length(rows, 0);  // row i runs the steps t with sizes[t] > i
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < sizes[t]; ++i) ++length[i];
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows / kRowGrain));
  int64_t total = 0;
  for (int64_t i = 0; i < rows; ++i) total += length[i];
  std::vector<int64_t> bounds{0};
  int64_t seen = 0;
  for (int64_t i = 0; i < rows && static_cast<int64_t>(bounds.size()) < parts; ++i) {
    seen += length[i];
    if (seen * parts >= total * static_cast<int64_t>(bounds.size()) && i + 1 - bounds.back() >= kRowGrain)
      bounds.push_back(i + 1);
  }
  bounds.push_back(rows);
  return bounds;
}

}  // namespace

// gi [N, 3H]: packed input projections (b_ih included); att [N], or empty for the GRU; batch_sizes [T] int64;
// h0 [B, H] in sorted row order; w_hh [3H, H]; b_hh [3H].
// Returns out [N, H] (the state after each packed step), prev [N, H] (the state before it) and gates [N, 4H]:
// r, z, n and W_hn h + b_hn of every packed step.
std::vector<at::Tensor> forward(const at::Tensor& gi, const at::Tensor& att, const at::Tensor& batch_sizes,
                                const at::Tensor& h0, const at::Tensor& w_hh, const at::Tensor& b_hh) {
  const int64_t N = gi.size(0), H3 = gi.size(1), H = H3 / 3, B = h0.size(0), T = batch_sizes.size(0);
  auto out = at::empty({N, H}, gi.options());
  auto prev = at::empty({N, H}, gi.options());
  auto gates = at::empty({N, 4 * H}, gi.options());
  const std::vector<int64_t> offsets = step_offsets(batch_sizes);
  const std::vector<int64_t> bounds = balanced_rows(batch_sizes, B);
  const int64_t* sizes = batch_sizes.data_ptr<int64_t>();
  const bool has_att = att.numel() > 0;
  const at::Tensor w_t = w_hh.t();
  const at::Tensor w_cols = w_t.contiguous();
  const float* w_data = w_cols.data_ptr<float>();
  const float* bias = b_hh.data_ptr<float>();
  const float* gi_data = gi.data_ptr<float>();
  const float* att_data = has_att ? att.data_ptr<float>() : nullptr;
  const float* h0_data = h0.data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  float* prev_data = prev.data_ptr<float>();
  float* gates_data = gates.data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t p0, int64_t p1) {
    at::NoGradGuard no_grad;  // grad mode is thread-local, and the pool's threads have it on
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r0 = bounds[p], r1 = bounds[p + 1];
      auto gh = at::empty({r1 - r0, H3}, gi.options());
      float* gh_data = gh.data_ptr<float>();
      for (int64_t t = 0; t < T && sizes[t] > r0; ++t) {
        const int64_t rows = std::min(r1, sizes[t]) - r0, first = offsets[t] + r0;
        const int64_t h_first = t == 0 ? r0 : offsets[t - 1] + r0;
        std::copy_n((t == 0 ? h0_data : out_data) + h_first * H, rows * H, prev_data + first * H);
        if (few_rows(rows, H)) {
          recurrent_gates_of_few_rows(prev_data + first * H, rows, w_data, H, gh_data);
        } else {
          at::Tensor gh_rows = gh.narrow(0, 0, rows);
          at::mm_out(gh_rows, prev.narrow(0, first, rows), w_t);
        }
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = first + i;
          const float* x = gi_data + row * H3;
          const float* g = gh_data + i * H3;
          const float* h_row = prev_data + row * H;
          float* h_next = out_data + row * H;
          float* saved = gates_data + row * 4 * H;
          // AUGRU: u = a (1 - z); the GRU is a = 1.
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
            h_next[j] = h_row[j] + a * (1.f - z) * (n - h_row[j]);
          }
        }
      }
    }
  });
  return {out, prev, gates};
}

// gates [N, 4H] and prev [N, H] from forward; att [N] or empty; batch_sizes [T]; grad_out [N, H]: the gradient of
// out; w_hh [3H, H].
// Returns the gradients of the hidden projections [N, 3H] (gate order r, z, n), of the input projection of n
// [N, H] (r and z are the hidden ones), of att [N] (empty for the GRU) and of h0 [B, H].
std::vector<at::Tensor> backward(const at::Tensor& gates, const at::Tensor& prev, const at::Tensor& att,
                                 const at::Tensor& batch_sizes, const at::Tensor& grad_out, const at::Tensor& w_hh,
                                 int64_t B) {
  const int64_t N = gates.size(0), H = gates.size(1) / 4, H3 = 3 * H, T = batch_sizes.size(0);
  auto grad_gh = at::empty({N, H3}, gates.options());
  auto grad_gi_n = at::empty({N, H}, gates.options());
  const bool has_att = att.numel() > 0;
  auto grad_att = at::empty({has_att ? N : 0}, gates.options());
  auto grad_h0 = at::empty({B, H}, gates.options());
  const std::vector<int64_t> offsets = step_offsets(batch_sizes);
  const std::vector<int64_t> bounds = balanced_rows(batch_sizes, B);
  const int64_t* sizes = batch_sizes.data_ptr<int64_t>();
  const float* gates_data = gates.data_ptr<float>();
  const float* prev_data = prev.data_ptr<float>();
  const float* grad_out_data = grad_out.data_ptr<float>();
  const float* att_data = has_att ? att.data_ptr<float>() : nullptr;
  float* grad_gh_data = grad_gh.data_ptr<float>();
  float* grad_gi_n_data = grad_gi_n.data_ptr<float>();
  float* grad_att_data = has_att ? grad_att.data_ptr<float>() : nullptr;
  at::parallel_for(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t p0, int64_t p1) {
    at::NoGradGuard no_grad;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r0 = bounds[p], r1 = bounds[p + 1];
      // dh: the gradient of each row's state after step t from later steps; zero before its last step.
      auto dh = at::zeros({r1 - r0, H}, gates.options());
      auto carried = at::empty({r1 - r0, H}, gates.options());
      float* dh_data = dh.data_ptr<float>();
      float* carried_data = carried.data_ptr<float>();
      for (int64_t t = T - 1; t >= 0; --t) {
        if (sizes[t] <= r0) continue;
        const int64_t rows = std::min(r1, sizes[t]) - r0, first = offsets[t] + r0;
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = first + i;
          const float* saved = gates_data + row * 4 * H;
          const float* h = prev_data + row * H;
          const float* injected = grad_out_data + row * H;
          const float* later = dh_data + i * H;
          float* d_gh = grad_gh_data + row * H3;
          float* d_gi_n = grad_gi_n_data + row * H;
          float* carry = carried_data + i * H;
          const float a = has_att ? att_data[row] : 1.f;
          float d_att = 0.f;
#pragma omp simd reduction(+ : d_att)
          for (int64_t j = 0; j < H; ++j) {
            const float r = saved[j], z = saved[H + j], n = saved[2 * H + j], hn = saved[3 * H + j];
            const float d = later[j] + injected[j];
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
        // dh_{t-1} = dh_t (1 - u_t) + dG_t W_hh for the running rows; the others have not started.
        at::Tensor dh_rows = dh.narrow(0, 0, rows);
        at::addmm_out(dh_rows, carried.narrow(0, 0, rows), grad_gh.narrow(0, first, rows), w_hh);
      }
      grad_h0.narrow(0, r0, r1 - r0).copy_(dh);
    }
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
  const at::Tensor w_cols = w_t.contiguous();
  const float* w_data = w_cols.data_ptr<float>();
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
    float* gh_data = gh.data_ptr<float>();
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t first = k * kBlockRows, rows = std::min(kBlockRows, B - first);
      const int64_t* members = sorted + first;
      for (int64_t i = 0; i < rows; ++i) std::copy_n(out + members[i] * H, H, h_data + i * H);
      const int64_t steps = std::min(length[members[0]], T);  // the block's longest row comes first
      auto h_block = h.narrow(0, 0, rows), gh_block = gh.narrow(0, 0, rows);
      for (int64_t t = 0; t < steps; ++t) {
        if (few_rows(rows, H)) {
          recurrent_gates_of_few_rows(h_data, rows, w_data, H, gh_data);
        } else {
          at::mm_out(gh_block, h_block, w_t);
        }
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
