// Fused CPU MoE: routed experts of one layer in one call.
//   out[t] = sum_k topk_weights[t, k] * W2[e] @ (silu(W1[e] @ x[t]) * (W3[e] @ x[t])),  e = topk_ids[t, k] (-1 = masked)
//
// Legend: T tokens, K top-k slots, S routed slots (sorted by expert), E experts, H hidden, I intermediate;
//         Hk = H padded for the first GEMM's reduction, Hn = H padded to 32 rows, Ia = I padded.
// Inputs (contiguous, checked in kernels/cpu_moe.py): x fp32 [T, H], topk_ids int64 [T, K],
// topk_weights fp32 [T, K], out fp32 [T, H] (zero-filled here). Packed weights: see moe_tiles.h.
//   w13: blocks [E][2 * Ia / 16] (gate blocks, then up blocks) over Hk; w2: blocks [E][Hn / 16] over Ia.
// Steps: route (counting sort by expert) -> quantize x rows -> gate/up tiles + SiLU-and-mul
//        -> quantize the activation rows -> down tiles, each task owning 128 output columns of every
//        token, so every output element has one writer and a fixed summation order (experts ascending,
//        then slots): results do not depend on the thread count.
#include <pybind11/pybind11.h>

#include "argmax.h"
#include "fast_exp.h"
#include "paged_attention.h"
#include "rms_norm.h"
#include "rotary_kv.h"
#include "task_pool.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
#include <sys/syscall.h>
#include <unistd.h>

#include "moe_tiles_amx.h"
#define CPU_MOE_TILES "avx512"
#define CPU_MOE_AMX 1
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#include "moe_tiles_avx512.h"
#define CPU_MOE_TILES "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#include "moe_tiles_avx2.h"
#define CPU_MOE_TILES "avx2"
#else
#include "moe_tiles_generic.h"
#define CPU_MOE_TILES "portable"
#endif

namespace cpu_moe {

using TileFn = void (*)(const WeightBlock*, const ActRow*, int64_t, int, float*);
constexpr int kMaxTM = 16;
constexpr int64_t kSlotChunk = 64;      // slots per gate/up task: keeps its activation rows in L2
constexpr int64_t kPairChunk = 4;       // gate/up block pairs per task (64 columns of I)
constexpr int64_t kDownBlocks = 8;      // output blocks per down task (128 columns of H)

// consecutive: the largest tile needs its rows consecutive in one buffer (and, for int8, the split copy).
struct Tiles {
  TileFn fn[5];
  int tm[5];
  int count;
  bool consecutive = false;
  // Whether rows must take that layout, when at most `most_rows` go through one tile sequence.
  bool consecutive_rows(int64_t most_rows) const { return consecutive && most_rows >= tm[0]; }
};

#ifdef CPU_MOE_AMX
// Linux hands out AMX tile state only on request (arch_prctl); without it the first tile instruction faults.
bool request_amx() {
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}
const bool kAmxAvailable = request_amx();
int64_t amx_calls() { return amx_tile_calls.load(); }
#else
constexpr bool kAmxAvailable = false;
int64_t amx_calls() { return 0; }
#endif
bool g_amx = kAmxAvailable;   // tests and benchmarks switch it off to compare against the VNNI tiles

bool amx_enabled() { return g_amx; }
void set_amx(bool on) {
  if (on && !kAmxAvailable)
    throw std::invalid_argument("AMX tiles are not available in this build or on this CPU (see kernels.cpu_features)");
  g_amx = on;
}

// The first tile over each block pair prefetches the pair the caller runs next into L2 (WeightBlock::ahead), so
// that DRAM streams while later tiles re-read this pair for more tokens. On by default; benchmarks switch it off
// for an in-run baseline.
bool g_next_block_prefetch = true;
void set_next_block_prefetch(bool on) { g_next_block_prefetch = on; }

Tiles tiles_for(WeightType wt) {
#ifdef CPU_MOE_AMX
  if (g_amx && wt == WeightType::int8)
    return {{tile_int8_amx, tile_int8<8>, tile_int8<4>, tile_int8<2>, tile_int8<1>}, {kAmxTM, 8, 4, 2, 1}, 5, true};
  if (g_amx && wt == WeightType::int4)
    return {{tile_int4_amx, tile_int4<8>, tile_int4<4>, tile_int4<2>, tile_int4<1>}, {kAmxTM, 8, 4, 2, 1}, 5, true};
#endif
  switch (wt) {
    case WeightType::fp32: return {{tile_fp32<8>, tile_fp32<4>, tile_fp32<2>, tile_fp32<1>}, {8, 4, 2, 1}, 4};
    case WeightType::bf16: return {{tile_bf16<8>, tile_bf16<4>, tile_bf16<2>, tile_bf16<1>}, {8, 4, 2, 1}, 4};
    case WeightType::bf16_fp32act:
      return {{tile_bf16<8, true>, tile_bf16<4, true>, tile_bf16<2, true>, tile_bf16<1, true>}, {8, 4, 2, 1}, 4};
    // A 3-token tile: an expert's 7 tokens take two passes over its blocks (4 + 3), not three (4 + 2 + 1).
    // 8-token tiles: AVX-512 keeps them in registers (moe_tiles_avx512.h); AVX2 runs them as two of 4.
    case WeightType::int8:
      return {{tile_int8<8>, tile_int8<4>, tile_int8<3>, tile_int8<2>, tile_int8<1>}, {8, 4, 3, 2, 1}, 5};
    case WeightType::int4:
      return {{tile_int4<8>, tile_int4<4>, tile_int4<3>, tile_int4<2>, tile_int4<1>}, {8, 4, 3, 2, 1}, 5};
  }
  throw std::invalid_argument("unknown weight type");
}

struct Matrix {          // one projection of every expert, packed
  WeightType wt;
  const uint8_t* q;
  const uint8_t* scale;
  int64_t rows;          // padded output rows (multiple of 16)
  int64_t kp;            // padded reduction length
  int group;

  int64_t blocks() const { return rows / kRows; }
  int64_t block_bytes() const {
    switch (wt) {
      case WeightType::fp32: return kp * kRows * 4;
      case WeightType::bf16:
      case WeightType::bf16_fp32act: return kp * kRows * 2;
      case WeightType::int8: return kp * kRows;
      case WeightType::int4: return kp * kRows / 2;
    }
    return 0;
  }
  WeightBlock block(int64_t e, int64_t b) const {
    WeightBlock wb{q + (e * blocks() + b) * block_bytes(), nullptr};
    if (wt == WeightType::int8) {
      wb.scale = reinterpret_cast<const float*>(scale) + e * rows + b * kRows;
    } else if (wt == WeightType::int4) {
      wb.scale = reinterpret_cast<const uint16_t*>(scale) + (e * blocks() + b) * (kp / group) * 2 * kRows;
    }
    return wb;
  }
};

// Bytes to the line `blocks` further on in memory: where the caller's next tile reads.
int64_t ahead(const Matrix& m, int64_t blocks) { return g_next_block_prefetch ? blocks * m.block_bytes() : 0; }

struct ActBuffer {       // quantized activation rows in the layout the tiles expect
  std::vector<uint8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> qsum;
  int64_t row_bytes = 0, groups = 1;

  ActRow row(int64_t i) const {
    return {q.data() + i * row_bytes, scale.empty() ? nullptr : scale.data() + i * groups,
            qsum.empty() ? nullptr : qsum.data() + i * groups, row_bytes};
  }
};

// amx: rows the AMX tiles read 16 at a time (moe_tiles_amx.h). int8 rows then also get the hi/lo byte copy after
// their s16 values, and every row spans an odd number of cache lines: at a multiple of 4 KB (H = 4096, say) the
// 16 rows of a tile load would share one L1 set and evict each other (measured: 2x slower tiles).
void quantize_rows(WeightType wt, int group, const float* src, int64_t rows, int64_t k, int64_t kp, ActBuffer& buf,
                   bool amx = false) {
  const bool f32 = wt == WeightType::fp32 || wt == WeightType::bf16_fp32act;   // rows copied as they are
  const int64_t bytes = f32 ? 4 : wt == WeightType::int4 ? 1 : 2;
  const int64_t kp64 = round_up64(kp);
  const bool amx_split = amx && wt == WeightType::int8;
  buf.row_bytes = kp * bytes + (amx_split ? 2 * kp64 : 0);
  if (amx) buf.row_bytes = ((buf.row_bytes + 63) / 64 | 1) * 64;
  buf.groups = wt == WeightType::int4 ? kp / group : 1;
  buf.q.assign(rows * buf.row_bytes, 0);
  if (wt == WeightType::int8 || wt == WeightType::int4) buf.scale.assign(rows * buf.groups, 0.f);
  if (wt == WeightType::int4) buf.qsum.assign(rows * buf.groups, 0);
  constexpr int64_t kRowChunk = 16;
  run_tasks((rows + kRowChunk - 1) / kRowChunk, [&](int64_t i) {
    for (int64_t r = i * kRowChunk; r < std::min(rows, (i + 1) * kRowChunk); r++) {
      const float* a = src + r * k;
      uint8_t* dst = buf.q.data() + r * buf.row_bytes;
      if (f32) {
        std::memcpy(dst, a, k * 4);
      } else if (wt == WeightType::bf16) {
        uint16_t* d = reinterpret_cast<uint16_t*>(dst);
        for (int64_t i = 0; i < k; i++) {   // round to nearest even
          uint32_t u;
          std::memcpy(&u, a + i, 4);
          d[i] = uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
        }
      } else if (wt == WeightType::int8) {   // s16, one scale per row; the padding stays 0
        float amax = 0.f;
        for (int64_t i = 0; i < k; i++) amax = std::max(amax, std::fabs(a[i]));
        const float scale = amax > 0.f ? amax / 32767.f : 1.f, inv = 1.f / scale;
        int16_t* d = reinterpret_cast<int16_t*>(dst);
        for (int64_t i = 0; i < k; i++) d[i] = int16_t(std::nearbyint(a[i] * inv));
        if (amx_split) {   // d = 256 * hi + lo, hi s8, lo u8
          int8_t* hi = reinterpret_cast<int8_t*>(dst + 2 * kp);
          uint8_t* lo = dst + 2 * kp + kp64;
          for (int64_t i = 0; i < k; i++) hi[i] = int8_t(d[i] >> 8), lo[i] = uint8_t(d[i] & 0xFF);
        }
        buf.scale[r] = scale;
      } else {                               // s8, one scale and one sum of q per group
        for (int64_t g0 = 0; g0 < kp; g0 += group) {
          const int64_t g1 = std::min<int64_t>(g0 + group, k);
          float amax = 0.f;
          for (int64_t i = g0; i < g1; i++) amax = std::max(amax, std::fabs(a[i]));
          const float scale = amax > 0.f ? amax / 127.f : 1.f, inv = 1.f / scale;
          int32_t qsum = 0;
          for (int64_t i = g0; i < g1; i++) {
            const int32_t v = int32_t(std::nearbyint(a[i] * inv));
            qsum += v;
            dst[i] = uint8_t(int8_t(v));
          }
          buf.scale[r * buf.groups + g0 / group] = scale;
          buf.qsum[r * buf.groups + g0 / group] = qsum;
        }
      }
    }
  });
}

// Calls fn(first_row, tile_index) over n rows in tiles of decreasing size, all over the block pair wb. Only the
// first tile prefetches the pair the caller runs next (`next` bytes on, see ahead()): the later ones re-read wb.
template <class F>
void for_each_tile(const Tiles& tiles, int64_t n, WeightBlock (&wb)[kRB], int64_t next, const F& fn) {
  int64_t i = 0;
  for (int j = 0; j < tiles.count; j++)
    for (; n - i >= tiles.tm[j]; i += tiles.tm[j]) {
      wb[0].ahead = wb[1].ahead = i == 0 ? next : 0;
      fn(i, j);
    }
}

void moe_forward(int weight_type, int group, int64_t T, int64_t K, int64_t E, int64_t H, int64_t I,
                 int64_t Hk, int64_t Hn, int64_t Ia, uintptr_t x_ptr, uintptr_t ids_ptr, uintptr_t weights_ptr,
                 uintptr_t out_ptr, uintptr_t w13_q, uintptr_t w13_scale, uintptr_t w2_q, uintptr_t w2_scale) {
  const auto wt = static_cast<WeightType>(weight_type);
  const float* x = reinterpret_cast<const float*>(x_ptr);              // [T, H]
  const int64_t* ids = reinterpret_cast<const int64_t*>(ids_ptr);      // [T, K]
  const float* topk_w = reinterpret_cast<const float*>(weights_ptr);   // [T, K]
  float* out = reinterpret_cast<float*>(out_ptr);                      // [T, H]
  const Matrix w13{wt, reinterpret_cast<const uint8_t*>(w13_q), reinterpret_cast<const uint8_t*>(w13_scale),
                   2 * Ia, Hk, group};
  const Matrix w2{wt, reinterpret_cast<const uint8_t*>(w2_q), reinterpret_cast<const uint8_t*>(w2_scale), Hn, Ia, group};
  const Tiles tiles = tiles_for(wt);
  std::memset(out, 0, T * H * sizeof(float));   // every slot adds into its token's row

  // Route: counting sort of the T*K slots by expert (stable, so the order is fixed).
  std::vector<int64_t> count(E + 1, 0);
  for (int64_t i = 0; i < T * K; i++) {
    const int64_t e = ids[i];
    if (e < -1 || e >= E)
      throw std::invalid_argument("topk_ids[" + std::to_string(i / K) + ", " + std::to_string(i % K) + "] = " +
                                  std::to_string(e) + ": expert ids must be in [0, " + std::to_string(E) +
                                  ") or -1 for a masked slot");
    if (e >= 0) count[e + 1]++;
  }
  for (int64_t e = 0; e < E; e++) count[e + 1] += count[e];           // count[e] = first slot of expert e
  const int64_t S = count[E];
  std::vector<int64_t> slot_token(S);                                  // [S]
  std::vector<float> slot_weight(S);                                   // [S]
  std::vector<int64_t> fill(count.begin(), count.end() - 1);
  for (int64_t i = 0; i < T * K; i++)
    if (ids[i] >= 0) {
      const int64_t s = fill[ids[i]]++;
      slot_token[s] = i / K;
      slot_weight[s] = topk_w[i];
    }
  std::vector<int64_t> active;                                         // experts with slots, ascending
  for (int64_t e = 0; e < E; e++)
    if (count[e + 1] > count[e]) active.push_back(e);
  if (S == 0) return;

  // The AMX tiles read 16 consecutive rows: where an expert has that many slots, quantize x in slot order
  // (and both activations in the AMX row layout). Decode steps, with fewer, skip both copies.
  int64_t most_slots = 0;
  for (int64_t e : active) most_slots = std::max(most_slots, count[e + 1] - count[e]);
  const bool by_slot = tiles.consecutive_rows(most_slots);
  std::vector<float> x_slots;                                          // [S, H] when by_slot
  if (by_slot) {
    x_slots.resize(S * H);
    for (int64_t s = 0; s < S; s++) std::memcpy(x_slots.data() + s * H, x + slot_token[s] * H, H * 4);
  }
  ActBuffer xq;
  quantize_rows(wt, group, by_slot ? x_slots.data() : x, by_slot ? S : T, H, Hk, xq, by_slot);   // [T or S, Hk]
  auto x_row = [&](int64_t s) { return xq.row(by_slot ? s : slot_token[s]); };

  // Gate/up: task = (expert, chunk of its slots, chunk of block pairs) -> act [S, Ia] fp32.
  struct GateUpTask { int64_t e, s0, s1, p0, p1; };
  std::vector<GateUpTask> gate_up_tasks;
  const int64_t pairs = Ia / kRows;
  for (int64_t e : active)
    for (int64_t s0 = count[e]; s0 < count[e + 1]; s0 += kSlotChunk)
      for (int64_t p0 = 0; p0 < pairs; p0 += kPairChunk)
        gate_up_tasks.push_back({e, s0, std::min(s0 + kSlotChunk, count[e + 1]), p0, std::min(p0 + kPairChunk, pairs)});
  std::vector<float> act(S * Ia);                                      // [S, Ia]
  run_tasks(int64_t(gate_up_tasks.size()), [&](int64_t i) {
    const GateUpTask& task = gate_up_tasks[i];
    float tile_out[kMaxTM * kRB * kRows];                              // [TM, 2 * 16]
    ActRow rows[kMaxTM];
    for (int64_t p = task.p0; p < task.p1; p++) {
      WeightBlock wb[kRB] = {w13.block(task.e, p), w13.block(task.e, pairs + p)};   // gate, up
      for_each_tile(tiles, task.s1 - task.s0, wb, ahead(w13, 1), [&](int64_t first, int j) {   // next: gate, up p + 1
        const int tm = tiles.tm[j];
        for (int t = 0; t < tm; t++) rows[t] = x_row(task.s0 + first + t);
        tiles.fn[j](wb, rows, Hk, group, tile_out);
        for (int t = 0; t < tm; t++) {
          float* dst = act.data() + (task.s0 + first + t) * Ia + p * kRows;
          const float* g = tile_out + t * kRB * kRows;
          for (int r = 0; r < kRows; r++) dst[r] = g[r] / (1.0f + fast_exp(-g[r])) * g[kRows + r];
        }
      });
    }
  });

  ActBuffer aq;
  quantize_rows(wt, group, act.data(), S, Ia, Ia, aq, by_slot);                // [S, Ia]

  // Down: task = 64 output columns of every token, over all active experts in order.
  const int64_t down_tasks = (Hn / kRows + kDownBlocks - 1) / kDownBlocks;
  run_tasks(down_tasks, [&](int64_t i) {
    float tile_out[kMaxTM * kRB * kRows];
    ActRow rows[kMaxTM];
    const int64_t b0 = i * kDownBlocks, b1 = std::min((i + 1) * kDownBlocks, Hn / kRows);
    for (int64_t e : active)                                           // each expert's blocks b0..b1 are contiguous
      for (int64_t b = b0; b < b1 && b * kRows < H; b += kRB) {
        const int64_t cols = std::min<int64_t>(kRB * kRows, H - b * kRows);
        WeightBlock wb[kRB] = {w2.block(e, b), w2.block(e, b + 1)};
        for_each_tile(tiles, count[e + 1] - count[e], wb, ahead(w2, kRB), [&](int64_t first, int j) {   // next: b + 2
          const int tm = tiles.tm[j];
          const int64_t s0 = count[e] + first;
          for (int t = 0; t < tm; t++) rows[t] = aq.row(s0 + t);
          tiles.fn[j](wb, rows, Ia, group, tile_out);
          for (int t = 0; t < tm; t++) {
            float* dst = out + slot_token[s0 + t] * H + b * kRows;
            const float w = slot_weight[s0 + t];
            for (int64_t c = 0; c < cols; c++) dst[c] += w * tile_out[t * kRB * kRows + c];
          }
        });
      }
  });
}

// A dense linear layer out [T, N] = x [T, K] @ W^T over one packed matrix W [Np, Kp] (the experts' layout, E = 1).
// Task = kLinearPairs block pairs (columns) for every token; each output element is one tile dot product in a
// fixed k order, so a row's result does not depend on the other rows in the batch or on the thread count.
void linear_forward(int weight_type, int group, int64_t T, int64_t N, int64_t K, int64_t Np, int64_t Kp,
                    uintptr_t x_ptr, uintptr_t out_ptr, uintptr_t w_q, uintptr_t w_scale) {
  constexpr int64_t kLinearPairs = 4;   // 128 output columns per task
  const auto wt = static_cast<WeightType>(weight_type);
  const float* x = reinterpret_cast<const float*>(x_ptr);              // [T, K]
  float* out = reinterpret_cast<float*>(out_ptr);                      // [T, N]
  const Matrix w{wt, reinterpret_cast<const uint8_t*>(w_q), reinterpret_cast<const uint8_t*>(w_scale), Np, Kp, group};
  const Tiles tiles = tiles_for(wt);
  ActBuffer xq;
  quantize_rows(wt, group, x, T, K, Kp, xq, tiles.consecutive_rows(T));   // [T, Kp]
  const int64_t pairs = Np / (kRB * kRows);
  run_tasks((pairs + kLinearPairs - 1) / kLinearPairs, [&](int64_t i) {
    float tile_out[kMaxTM * kRB * kRows];
    ActRow rows[kMaxTM];
    for (int64_t p = i * kLinearPairs; p < std::min(pairs, (i + 1) * kLinearPairs); p++) {
      WeightBlock wb[kRB] = {w.block(0, kRB * p), w.block(0, kRB * p + 1)};
      const int64_t c0 = p * kRB * kRows, cols = std::min<int64_t>(kRB * kRows, N - c0);
      for_each_tile(tiles, T, wb, ahead(w, kRB), [&](int64_t first, int j) {   // next: the next pair
        const int tm = tiles.tm[j];
        for (int t = 0; t < tm; t++) rows[t] = xq.row(first + t);
        tiles.fn[j](wb, rows, Kp, group, tile_out);
        for (int t = 0; t < tm; t++) std::memcpy(out + (first + t) * N + c0, tile_out + t * kRB * kRows, cols * 4);
      });
    }
  });
}

}  // namespace cpu_moe

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU MoE, dense linear, paged-attention decode and RMSNorm: see kernels/cpu_moe.py, cpu_linear.py, cpu_attention.py, cpu_norm.py";
  m.attr("tiles") = CPU_MOE_TILES;
  m.def("moe_forward", &cpu_moe::moe_forward, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("linear_forward", &cpu_moe::linear_forward, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("amx_enabled", &cpu_moe::amx_enabled, "whether the int8/int4 paths use the AMX tiles for 16-token tiles");
  m.def("amx_tile_calls", &cpu_moe::amx_calls, "AMX tile calls so far in this process (tests)");
  m.def("set_amx", &cpu_moe::set_amx, "switch the AMX tiles on or off (off: the VNNI tiles only; same results)");
  m.def("set_next_block_prefetch", &cpu_moe::set_next_block_prefetch,
        "switch the tiles' prefetch of the next blocks into L2 on or off (off: an in-run baseline; same results)");
  m.def("set_num_threads", &cpu_moe::set_num_threads);
  m.def("get_num_threads", &cpu_moe::get_num_threads);
  m.def("check_task_pool", &cpu_moe::check_task_pool, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("paged_attention_decode", &cpu_attention::paged_attention_decode,
        pybind11::call_guard<pybind11::gil_scoped_release>());
  // Microseconds each: they keep the GIL.
  m.def("rotary_write_kv", &cpu_attention::rotary_write_kv);
  m.def("rms_norm", &cpu_norm::rms_norm);
  m.def("argmax_rows", &cpu_sampling::argmax_rows, pybind11::call_guard<pybind11::gil_scoped_release>());
}
