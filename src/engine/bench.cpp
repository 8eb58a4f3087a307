#include "pdvm/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "pdvm/upg.h"

namespace pdvm {
namespace {

constexpr std::string_view kUpgCodesSuffix = ".upg.codes";

// Weights of the model as it computes: a UPG matrix counts its k * n logical elements once (at
// its codes tensor), not the bytes of its codes, tables and scales.
uint64_t logical_parameter_count(const GgufFile& file) {
  uint64_t n = 0;
  for (const GgufTensor& t : file.tensors()) {
    if (t.name.find(".upg.") == std::string::npos) {
      n += static_cast<uint64_t>(t.n_elems());
    } else if (t.name.ends_with(kUpgCodesSuffix)) {
      const std::vector<int64_t> shape =
          weight_shape(file, std::string_view(t.name).substr(0, t.name.size() - kUpgCodesSuffix.size()));
      n += static_cast<uint64_t>(shape[0] * shape[1]);
    }
  }
  return n;
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<int32_t> random_tokens(int n, int64_t n_vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(n_vocab - 1));
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (auto& t : tokens) t = pick(rng);
  return tokens;
}

// A decoded token reads every tensor once, except the embedding table (plain, or the components
// of a UPG matrix), of which it reads one row (unless the output head is tied to it, then it
// reads all of it as the head).
uint64_t decode_weight_bytes(const Session& session) {
  const std::string embedding = "token_embd.weight";
  const uint64_t n_vocab = static_cast<uint64_t>(std::max<int64_t>(session.config().n_vocab, 1));
  uint64_t bytes = 0;
  for (const GgufTensor& t : session.gguf().tensors()) {
    const bool is_embedding = t.name == embedding || t.name.starts_with(embedding + ".upg.");
    bytes += is_embedding && !session.config().tied_output ? t.n_bytes / n_vocab : t.n_bytes;
  }
  return bytes;
}

int32_t greedy_steps(Session& session, int32_t first, int n) {
  int32_t token = first;
  for (int i = 0; i < n; ++i) {
    session.eval({&token, 1});
    token = i + 1 < n ? session.greedy_token() : session.last_argmax();  // no step queued past the run
  }
  return token;
}

struct Rate {
  double median = 0.0;
  double stddev = 0.0;
};

Rate summarize(std::vector<double> rates) {
  std::sort(rates.begin(), rates.end());
  Rate r;
  const size_t n = rates.size();
  r.median = n % 2 ? rates[n / 2] : 0.5 * (rates[n / 2 - 1] + rates[n / 2]);
  double mean = 0.0;
  for (double v : rates) mean += v / static_cast<double>(n);
  double variance = 0.0;
  for (double v : rates) variance += (v - mean) * (v - mean);
  r.stddev = n > 1 ? std::sqrt(variance / static_cast<double>(n - 1)) : 0.0;
  return r;
}

}  // namespace

BenchReport run_bench(Session& session, const std::string& model_name, const BenchConfig& config,
                      double read_bandwidth_gb_per_s) {
  const LlamaConfig& c = session.config();
  BenchReport r;
  r.model = model_name;
  r.backend = session.backend().name();
  r.tensor_parallel = session.tensor_parallel();
  r.communicator = session.communicator_name();
  if (!r.communicator.empty()) r.backend += fmt::format(" tp{} {}", r.tensor_parallel, r.communicator);
  r.kv_type = std::string(type_name(session.kv_type()));
  r.n_layer = c.n_layer;
  r.n_threads = config.n_threads;
  r.repetitions = std::max(1, config.repetitions);
  for (const GgufTensor& t : session.gguf().tensors()) r.weight_bytes += t.n_bytes;
  r.n_params = logical_parameter_count(session.gguf());
  r.decode_weight_bytes = decode_weight_bytes(session);
  r.read_bandwidth_gb_per_s = read_bandwidth_gb_per_s;

  if (config.n_prompt > 0) {
    const std::vector<int32_t> prompt = random_tokens(config.n_prompt, c.n_vocab, config.seed);
    session.reset();
    session.eval(prompt);  // warm-up: scratch buffers, library handles
    session.last_argmax();
    std::vector<double> rates;
    for (int rep = 0; rep < r.repetitions; ++rep) {
      session.reset();
      const auto start = Clock::now();
      session.eval(prompt);
      session.last_argmax();  // waits for the device
      const double seconds = seconds_since(start);
      rates.push_back(config.n_prompt / seconds);
    }
    const Rate rate = summarize(rates);
    r.n_prompt = config.n_prompt;
    r.pp_tokens_per_s = rate.median;
    r.pp_tokens_per_s_stddev = rate.stddev;
    r.pp_seconds = config.n_prompt / rate.median;
  }

  if (config.n_gen > 0) {
    const int32_t first = random_tokens(1, c.n_vocab, config.seed + 1)[0];
    session.reset();
    greedy_steps(session, first, 3);  // warm-up: the first steps record the decode graph
    std::vector<double> rates;
    const std::optional<uint64_t> launches_before = session.kernel_launches();
    for (int rep = 0; rep < r.repetitions; ++rep) {
      session.reset();
      const auto start = Clock::now();
      greedy_steps(session, first, config.n_gen);
      rates.push_back(config.n_gen / seconds_since(start));
    }
    if (const std::optional<uint64_t> launches_after = session.kernel_launches(); launches_before && launches_after)
      r.tg_launches_per_token = static_cast<double>(*launches_after - *launches_before) /
                                (static_cast<double>(config.n_gen) * r.repetitions);
    const Rate rate = summarize(rates);
    r.n_gen = config.n_gen;
    r.tg_tokens_per_s = rate.median;
    r.tg_tokens_per_s_stddev = rate.stddev;
    r.tg_seconds = config.n_gen / rate.median;
    r.tg_ms_per_token = 1e3 * r.tg_seconds / config.n_gen;
    r.tg_ms_per_layer = r.tg_ms_per_token / std::max(c.n_layer, 1);
    // Step i attends to i + 1 cache rows of K and of V in every layer.
    const double kv_row = static_cast<double>(type_bytes(session.kv_type(), int64_t{c.n_head_kv} * c.head_dim));
    const double mean_rows = (config.n_gen + 1) / 2.0;
    const double kv_bytes = 2.0 * c.n_layer * mean_rows * kv_row;
    r.tg_bytes_per_token = r.decode_weight_bytes + static_cast<uint64_t>(kv_bytes);
    r.tg_gb_per_s = r.tg_bytes_per_token / (r.tg_seconds / config.n_gen) / 1e9;
    if (read_bandwidth_gb_per_s > 0.0) r.tg_pct_of_bandwidth = 100.0 * r.tg_gb_per_s / read_bandwidth_gb_per_s;
  }
  // The all-reduces of the path that decodes (unfused or the fused split), timed alone.
  if (!r.communicator.empty()) {
    r.all_reduces_per_token = 2 * c.n_layer;
    r.all_reduce_bytes_per_token = static_cast<uint64_t>(r.all_reduces_per_token) * c.n_embd * sizeof(float);
    r.all_reduce_ms_per_token = 1e3 * session.time_token_all_reduces(std::max(config.n_gen, 16));
  }
  session.reset();
  return r;
}

std::string bench_table_header() {
  return "| model | size | params | backend | threads | kv | test | t/s | ms/tok | ms/layer | MB/tok | GB/s | % bw |\n"
         "| --- | ---: | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |";
}

std::string bench_table_row(const BenchReport& r) {
  const std::string common =
      fmt::format("| {} | {:.1f} MiB | {:.1f} M | {} | {} | {} ", r.model, r.weight_bytes / 1048576.0,
                  r.n_params / 1e6, r.backend, r.n_threads, r.kv_type);
  std::string rows;
  if (r.n_prompt > 0) {
    rows += common + fmt::format("| pp{} | {:.1f} ± {:.1f} | | | | | |", r.n_prompt, r.pp_tokens_per_s,
                                 r.pp_tokens_per_s_stddev);
  }
  if (r.n_gen > 0) {
    if (!rows.empty()) rows += "\n";
    const std::string pct = r.tg_pct_of_bandwidth > 0.0 ? fmt::format("{:.1f}", r.tg_pct_of_bandwidth) : "-";
    rows += common + fmt::format("| tg{} | {:.1f} ± {:.1f} | {:.3f} | {:.4f} | {:.1f} | {:.1f} | {} |", r.n_gen,
                                 r.tg_tokens_per_s, r.tg_tokens_per_s_stddev, r.tg_ms_per_token,
                                 r.tg_ms_per_layer, r.tg_bytes_per_token / 1e6, r.tg_gb_per_s, pct);
  }
  if (r.all_reduces_per_token > 0) {
    // The token's collectives alone: ms/tok is their time, ms/layer their share per layer.
    if (!rows.empty()) rows += "\n";
    rows += common + fmt::format("| all-reduce x{} | | {:.3f} | {:.4f} | {:.3f} | | |", r.all_reduces_per_token,
                                 r.all_reduce_ms_per_token, r.all_reduce_ms_per_token / std::max(r.n_layer, 1),
                                 r.all_reduce_bytes_per_token / 1e6);
  }
  return rows;
}

std::string bench_json(const BenchReport& r) {
  nlohmann::json j = {
      {"model", r.model},
      {"backend", r.backend},
      {"kv_type", r.kv_type},
      {"n_layer", r.n_layer},
      {"n_threads", r.n_threads},
      {"repetitions", r.repetitions},
      {"n_params", r.n_params},
      {"weight_bytes", r.weight_bytes},
      {"decode_weight_bytes", r.decode_weight_bytes},
      {"pp",
       {{"n_tokens", r.n_prompt},
        {"seconds", r.pp_seconds},
        {"tokens_per_s", r.pp_tokens_per_s},
        {"tokens_per_s_stddev", r.pp_tokens_per_s_stddev}}},
      {"tg",
       {{"n_tokens", r.n_gen},
        {"seconds", r.tg_seconds},
        {"tokens_per_s", r.tg_tokens_per_s},
        {"tokens_per_s_stddev", r.tg_tokens_per_s_stddev},
        {"ms_per_token", r.tg_ms_per_token},
        {"ms_per_layer", r.tg_ms_per_layer},
        {"bytes_per_token", r.tg_bytes_per_token},
        {"gb_per_s", r.tg_gb_per_s},
        {"pct_of_read_bandwidth", r.tg_pct_of_bandwidth},
        {"launches_per_token", r.tg_launches_per_token >= 0 ? nlohmann::json(r.tg_launches_per_token) : nlohmann::json()}}},
      {"read_bandwidth_gb_per_s", r.read_bandwidth_gb_per_s},
      {"tensor_parallel", r.tensor_parallel},
      {"communicator", r.communicator},
      {"all_reduces_per_token", r.all_reduces_per_token},
      {"all_reduce_bytes_per_token", r.all_reduce_bytes_per_token},
      {"all_reduce_ms_per_token", r.all_reduce_ms_per_token},
  };
  return j.dump();
}

}  // namespace pdvm
