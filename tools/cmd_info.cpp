// `pdvm info MODEL [--json]`: what a GGUF file holds - architecture, hyper-parameters, tokenizer,
// every metadata key and the tensor table - as aligned text or as JSON for scripts and tests.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include <nlohmann/json.hpp>

#include "command.h"
#include "pdvm/gguf.h"

namespace pdvm::cli {
namespace {

using Json = nlohmann::ordered_json;

// Arrays longer than this are summarized in JSON by their length and first elements.
constexpr size_t kJsonFullArrayMax = 64;
constexpr size_t kJsonArrayHead = 16;

struct Options {
  std::string model;
  bool json = false;
};

struct HyperParameter {
  const char* label;
  const char* key_suffix;  // after "<architecture>."
};

constexpr HyperParameter kHyperParameters[] = {
    {"context length", "context_length"},
    {"embedding", "embedding_length"},
    {"blocks", "block_count"},
    {"feed-forward", "feed_forward_length"},
    {"heads", "attention.head_count"},
    {"kv heads", "attention.head_count_kv"},
    {"rope base", "rope.freq_base"},
    {"rope dims", "rope.dimension_count"},
    {"rms eps", "attention.layer_norm_rms_epsilon"},
    {"vocab size", "vocab_size"},
};

constexpr const char* kSpecialTokens[] = {"bos", "eos", "eot", "unknown", "padding", "separator", "mask"};

Json value_to_json(const GgufValue& value) {
  return std::visit(
      [](const auto& v) -> Json {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::shared_ptr<GgufArray>>) {
          Json array = {{"element_type", gguf_type_name(v->element_type)}, {"length", v->elements.size()}};
          const size_t shown = v->elements.size() <= kJsonFullArrayMax ? v->elements.size() : kJsonArrayHead;
          Json values = Json::array();
          for (size_t i = 0; i < shown; ++i) values.push_back(value_to_json(v->elements[i]));
          array["values"] = std::move(values);
          array["truncated"] = shown < v->elements.size();
          return array;
        } else {
          return Json(v);
        }
      },
      value.storage());
}

uint64_t array_length(const GgufFile& file, std::string_view key) {
  const GgufValue* value = file.find(key);
  return value != nullptr && value->type() == GgufType::kArray ? value->as_array().elements.size() : 0;
}

// The tokenizer's special token ids with their text, for those the file defines.
std::vector<std::tuple<std::string, int64_t, std::string>> special_tokens(const GgufFile& file) {
  std::vector<std::tuple<std::string, int64_t, std::string>> out;
  const GgufValue* tokens = file.find("tokenizer.ggml.tokens");
  for (const char* name : kSpecialTokens) {
    const GgufValue* id_value = file.find(fmt::format("tokenizer.ggml.{}_token_id", name));
    if (id_value == nullptr || !id_value->is_integer()) continue;
    const int64_t id = id_value->as_int();
    std::string text = "(out of range)";
    if (tokens != nullptr && tokens->type() == GgufType::kArray && id >= 0 &&
        static_cast<uint64_t>(id) < tokens->as_array().elements.size()) {
      const GgufValue& token = tokens->as_array().elements[static_cast<size_t>(id)];
      if (token.type() == GgufType::kString) text = token.as_string();
    }
    out.emplace_back(name, id, std::move(text));
  }
  return out;
}

struct Totals {
  uint64_t bytes = 0;
  int64_t elems = 0;
  double bits_per_weight() const { return elems == 0 ? 0.0 : 8.0 * static_cast<double>(bytes) / elems; }
};

Totals tensor_totals(const GgufFile& file) {
  Totals totals;
  for (const GgufTensor& tensor : file.tensors()) {
    totals.bytes += tensor.n_bytes;
    totals.elems += tensor.n_elems();
  }
  return totals;
}

std::string shape_string(const std::vector<int64_t>& shape) { return fmt::format("{}", fmt::join(shape, " x ")); }

std::string human_bytes(uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  if (bytes < 1024 * 1024) return fmt::format("{:.1f} KiB", bytes / 1024.0);
  if (bytes < uint64_t{1} << 30) return fmt::format("{:.1f} MiB", bytes / (1024.0 * 1024.0));
  return fmt::format("{:.2f} GiB", bytes / (1024.0 * 1024.0 * 1024.0));
}

// A value's display fitting `width` columns: arrays drop elements (keeping their item count),
// other values are cut.
std::string clipped_display(const GgufValue& value, size_t width) {
  std::string text = value.to_display_string(6);
  for (size_t elems = 3; text.size() > width && value.type() == GgufType::kArray; elems = elems / 2) {
    text = value.to_display_string(elems);
    if (elems == 0) break;
  }
  if (text.size() > width) text = text.substr(0, width - 3) + "...";
  return text;
}

void print_json(const GgufFile& file) {
  const std::string arch = file.get_string("general.architecture", "");
  const Totals totals = tensor_totals(file);
  Json doc = {{"path", file.path()},       {"version", file.version()},    {"alignment", file.alignment()},
              {"splits", file.n_splits()}, {"file_size", file.file_size()}, {"data_offset", file.data_section_offset()},
              {"architecture", arch}};
  Json hparams = Json::object();
  for (const HyperParameter& hp : kHyperParameters) {
    if (const GgufValue* value = file.find(arch + "." + hp.key_suffix)) hparams[hp.key_suffix] = value_to_json(*value);
  }
  doc["hyper_parameters"] = std::move(hparams);
  Json tokenizer = {{"model", file.get_string("tokenizer.ggml.model", "")},
                    {"pre", file.get_string("tokenizer.ggml.pre", "")},
                    {"vocab_size", array_length(file, "tokenizer.ggml.tokens")},
                    {"merges", array_length(file, "tokenizer.ggml.merges")}};
  for (const auto& [name, id, text] : special_tokens(file)) tokenizer[name] = {{"id", id}, {"text", text}};
  doc["tokenizer"] = std::move(tokenizer);
  Json metadata = Json::array();
  for (const GgufKeyValue& kv : file.metadata()) {
    metadata.push_back({{"key", kv.key}, {"type", gguf_type_name(kv.value.type())}, {"value", value_to_json(kv.value)}});
  }
  doc["metadata"] = std::move(metadata);
  Json tensors = Json::array();
  for (const GgufTensor& tensor : file.tensors()) {
    tensors.push_back({{"name", tensor.name},
                       {"type", type_name(tensor.type)},
                       {"type_id", static_cast<uint32_t>(tensor.type)},
                       {"shape", tensor.shape},
                       {"elements", tensor.n_elems()},
                       {"bytes", tensor.n_bytes},
                       {"offset", tensor.offset},
                       {"file_index", tensor.file_index},
                       {"file_offset", file.data_section_offset(tensor.file_index) + tensor.offset}});
  }
  doc["tensors"] = std::move(tensors);
  doc["totals"] = {{"tensors", file.tensors().size()},
                   {"elements", totals.elems},
                   {"bytes", totals.bytes},
                   {"bits_per_weight", totals.bits_per_weight()}};
  const std::string text = doc.dump(1, ' ', false, Json::error_handler_t::replace);
  fmt::print("{}\n", text);
}

void print_text(const GgufFile& file) {
  const std::string arch = file.get_string("general.architecture", "?");
  const Totals totals = tensor_totals(file);
  fmt::print("{}\n", file.path());
  fmt::print("  GGUF v{}, alignment {}, {} split{}, {}\n", file.version(), file.alignment(), file.n_splits(),
             file.n_splits() == 1 ? "" : "s", human_bytes(file.file_size()));
  fmt::print("  architecture {}  name {}\n\n", arch, file.get_string("general.name", "?"));

  fmt::print("hyper-parameters\n");
  for (const HyperParameter& hp : kHyperParameters) {
    if (const GgufValue* value = file.find(arch + "." + hp.key_suffix)) {
      fmt::print("  {:<16} {}\n", hp.label, value->to_display_string());
    }
  }
  fmt::print("\ntokenizer\n");
  fmt::print("  {:<16} {}\n", "model", file.get_string("tokenizer.ggml.model", "-"));
  fmt::print("  {:<16} {}\n", "pre", file.get_string("tokenizer.ggml.pre", "-"));
  fmt::print("  {:<16} {}\n", "tokens", array_length(file, "tokenizer.ggml.tokens"));
  fmt::print("  {:<16} {}\n", "merges", array_length(file, "tokenizer.ggml.merges"));
  for (const auto& [name, id, text] : special_tokens(file)) {
    fmt::print("  {:<16} {:<8} {}\n", name, id, GgufValue(text).to_display_string());
  }

  size_t key_width = 0;
  for (const GgufKeyValue& kv : file.metadata()) key_width = std::max(key_width, kv.key.size());
  fmt::print("\nmetadata ({} keys)\n", file.metadata().size());
  for (const GgufKeyValue& kv : file.metadata()) {
    const std::string type = kv.value.type() == GgufType::kArray
                                 ? fmt::format("{}[]", gguf_type_name(kv.value.as_array().element_type))
                                 : gguf_type_name(kv.value.type());
    fmt::print("  {:<{}}  {:<8} {}\n", kv.key, key_width, type, clipped_display(kv.value, 100));
  }

  size_t name_width = 4;
  for (const GgufTensor& tensor : file.tensors()) name_width = std::max(name_width, tensor.name.size());
  fmt::print("\ntensors ({})\n", file.tensors().size());
  fmt::print("  {:<{}}  {:<5}  {:<22} {:>12}\n", "name", name_width, "type", "shape", "bytes");
  for (const GgufTensor& tensor : file.tensors()) {
    fmt::print("  {:<{}}  {:<5}  {:<22} {:>12}\n", tensor.name, name_width, type_name(tensor.type),
               shape_string(tensor.shape), tensor.n_bytes);
  }
  fmt::print("\ntotal: {} tensors, {:.2f} M weights, {}, {:.3f} bits/weight\n", file.tensors().size(),
             static_cast<double>(totals.elems) / 1e6, human_bytes(totals.bytes), totals.bits_per_weight());
}

int run(const Options& opt) {
  const GgufFile file = GgufFile::open(opt.model);
  if (opt.json) {
    print_json(file);
  } else {
    print_text(file);
  }
  return 0;
}

PDVM_REGISTER_COMMAND("info", "show a GGUF model's metadata, hyper-parameters, tokenizer and tensors",
                      [](CLI::App& app) {
                        auto opt = std::make_shared<Options>();
                        app.add_option("model", opt->model, "GGUF file (the first one of a split model)")
                            ->required();
                        app.add_flag("--json", opt->json, "print JSON: every key with its type, every tensor");
                        return [opt] { return run(*opt); };
                      });

}  // namespace
}  // namespace pdvm::cli
