// `pdvm bench`: prompt processing (pp) and token generation (tg) throughput of a Session, with
// the memory-traffic view of decode: bytes a decoded token must stream (every weight once,
// plus the KV cache up to its position), the rate that implies, and its share of the device's
// measured read bandwidth. Backend-neutral; the CLI adds the bandwidth probe for GPUs.
#pragma once

#include <cstdint>
#include <string>

#include "pdvm/engine.h"

namespace pdvm {

struct BenchConfig {
  int n_prompt = 512;  // pp: tokens of one prefill from an empty cache (0 = skip)
  int n_gen = 128;     // tg: greedy decode steps from an empty cache (0 = skip)
  int repetitions = 3; // timed runs of each test; rates are their median, with the stddev
  int n_threads = 0;   // shown in the report (the backend got it through BackendOptions)
  uint64_t seed = 1;   // random prompt tokens
};

struct BenchReport {
  std::string model;
  std::string backend;
  std::string kv_type;
  int n_layer = 0;
  int n_threads = 0;
  int repetitions = 0;
  uint64_t n_params = 0;           // weights: elements of plain tensors, k * n of each UPG matrix
  uint64_t weight_bytes = 0;       // all tensors of the file
  uint64_t decode_weight_bytes = 0;  // what one decoded token reads (one embedding row)
  int n_prompt = 0;
  double pp_seconds = 0.0;
  double pp_tokens_per_s = 0.0;         // median over the repetitions
  double pp_tokens_per_s_stddev = 0.0;
  int n_gen = 0;
  double tg_seconds = 0.0;
  double tg_tokens_per_s = 0.0;         // median over the repetitions
  double tg_tokens_per_s_stddev = 0.0;
  double tg_ms_per_token = 0.0;
  double tg_ms_per_layer = 0.0;
  uint64_t tg_bytes_per_token = 0;  // weights + mean KV cache read over the tg positions
  double tg_gb_per_s = 0.0;
  double read_bandwidth_gb_per_s = 0.0;  // 0 when not measured
  double tg_pct_of_bandwidth = 0.0;      // 0 when not measured
  int tensor_parallel = 1;               // ranks the model is split over
  std::string communicator;              // empty when not split
  int all_reduces_per_token = 0;
  uint64_t all_reduce_bytes_per_token = 0;  // F32 activations summed per token, per rank
  double all_reduce_ms_per_token = 0.0;  // the token's all-reduces timed alone (Session::time_token_all_reduces)
  double tg_launches_per_token = -1.0;   // device kernels per generated token; < 0: not counted
};

// Runs pp then tg (each after one untimed warm-up pass, which also records graphs) and leaves
// the session reset. read_bandwidth_gb_per_s: the device's measured read rate, or 0.
BenchReport run_bench(Session& session, const std::string& model_name, const BenchConfig& config,
                      double read_bandwidth_gb_per_s);

// A markdown table in the style of llama-bench: one row per test (pp<N>, tg<N>), tokens/s as
// median +- stddev, then the decode memory-traffic columns on tg rows.
std::string bench_table_header();
std::string bench_table_row(const BenchReport& report);  // one or two lines
std::string bench_json(const BenchReport& report);  // one JSON object, one line

}  // namespace pdvm
