// Tokenizer::from_gguf: reads the tokenizer.ggml.* metadata into a TokenizerVocab.
#include <fmt/format.h>

#include <limits>

#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/tokenizer.h"

namespace pdvm {
namespace {

const GgufArray* find_array(const GgufFile& file, std::string_view key, bool required) {
  const GgufValue* value = file.find(key);
  if (!value) {
    if (required) throw Error(ErrorKind::kFileFormat, fmt::format("{}: missing {}", file.path(), key));
    return nullptr;
  }
  if (value->type() != GgufType::kArray) {
    throw Error(ErrorKind::kFileFormat,
                fmt::format("{}: {} is a {}, expected an array", file.path(), key, gguf_type_name(value->type())));
  }
  return &value->as_array();
}

void check_element_type(const GgufFile& file, std::string_view key, const GgufArray& array, bool numeric) {
  const bool ok = numeric ? array.element_type != GgufType::kString && array.element_type != GgufType::kArray &&
                                array.element_type != GgufType::kBool
                          : array.element_type == GgufType::kString;
  if (!ok) {
    throw Error(ErrorKind::kFileFormat, fmt::format("{}: {} holds {} elements, expected {}", file.path(), key,
                                                    gguf_type_name(array.element_type), numeric ? "numbers" : "strings"));
  }
}

std::vector<std::string> read_strings(const GgufFile& file, std::string_view key, bool required) {
  std::vector<std::string> strings;
  const GgufArray* array = find_array(file, key, required);
  if (!array) return strings;
  check_element_type(file, key, *array, false);
  strings.reserve(array->elements.size());
  for (const GgufValue& element : array->elements) strings.push_back(element.as_string());
  return strings;
}

int32_t read_id(const GgufFile& file, std::string_view key, int32_t fallback) {
  const int64_t id = file.get_int(key, fallback);
  if (id < -1 || id > std::numeric_limits<int32_t>::max()) {
    throw Error(ErrorKind::kFileFormat, fmt::format("{}: {} = {} is not a token id", file.path(), key, id));
  }
  return static_cast<int32_t>(id);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& file) {
  TokenizerVocab vocab;
  vocab.model_name = file.get_string_required("tokenizer.ggml.model");
  const bool spm = vocab.model_name == "llama";
  if (spm) {
    vocab.kind = TokenizerKind::kSentencePiece;
  } else if (vocab.model_name == "gpt2") {
    vocab.kind = TokenizerKind::kByteLevelBpe;
  } else {
    throw Error(ErrorKind::kUnsupported,
                fmt::format("{}: unsupported tokenizer.ggml.model = \"{}\" (supported: llama, gpt2)", file.path(),
                            vocab.model_name));
  }
  vocab.pre_name = file.get_string("tokenizer.ggml.pre", "default");
  vocab.tokens = read_strings(file, "tokenizer.ggml.tokens", true);

  if (const GgufArray* scores = find_array(file, "tokenizer.ggml.scores", false)) {
    check_element_type(file, "tokenizer.ggml.scores", *scores, true);
    vocab.scores.reserve(scores->elements.size());
    for (const GgufValue& score : scores->elements) vocab.scores.push_back(static_cast<float>(score.as_double()));
  }
  if (const GgufArray* types = find_array(file, "tokenizer.ggml.token_type", false)) {
    check_element_type(file, "tokenizer.ggml.token_type", *types, true);
    vocab.types.reserve(types->elements.size());
    for (size_t i = 0; i < types->elements.size(); ++i) {
      const int64_t raw = types->elements[i].as_int();
      if (raw < 0 || raw > static_cast<int64_t>(TokenType::kByte)) {
        throw Error(ErrorKind::kFileFormat,
                    fmt::format("{}: tokenizer.ggml.token_type[{}] = {} is not a token type", file.path(), i, raw));
      }
      vocab.types.push_back(static_cast<TokenType>(raw));
    }
  }
  if (!spm) vocab.merges = read_strings(file, "tokenizer.ggml.merges", true);

  // Defaults follow the SentencePiece LLaMA conventions where the keys are absent.
  vocab.bos_id = read_id(file, "tokenizer.ggml.bos_token_id", spm ? 1 : -1);
  vocab.eos_id = read_id(file, "tokenizer.ggml.eos_token_id", spm ? 2 : -1);
  vocab.unknown_id = read_id(file, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
  vocab.eot_id = read_id(file, "tokenizer.ggml.eot_token_id", -1);
  vocab.eom_id = read_id(file, "tokenizer.ggml.eom_token_id", -1);
  const bool llama3 = vocab.pre_name == "llama-bpe" || vocab.pre_name == "llama3";
  vocab.add_bos = file.get_bool("tokenizer.ggml.add_bos_token", spm || llama3);
  vocab.add_eos = file.get_bool("tokenizer.ggml.add_eos_token", false);
  vocab.add_space_prefix = file.get_bool("tokenizer.ggml.add_space_prefix", spm);
  try {
    return Tokenizer(std::move(vocab));
  } catch (const Error& e) {
    throw Error(e.kind(), fmt::format("{}: {}", file.path(), e.what()));
  }
}

}  // namespace pdvm
