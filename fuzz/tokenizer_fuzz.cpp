// libFuzzer target for the tokenizers. The first input byte picks a vocabulary (the three
// llama.cpp test vocabularies, and the default model's when present), the mode and the flags:
//  * text mode: encode the rest as text (parse_special on/off, add_special on/off); every id
//    must be in the vocabulary, and without parse_special decode(encode(text)) == text, less
//    what the formats lose by design: bytes a byte-level vocabulary has no token for (dropped,
//    as tokenizers does) and SPM's space mark U+2581 written in the text (decoded as a space,
//    as SentencePiece does).
//  * id mode: the rest is a sequence of ids, out-of-range ones included, fed to the streaming
//    decoder: bad ids must raise Error(kOutOfRange) and leave the decoder usable; the streamed
//    text of the valid ids must equal decode() of them.
// Files: $PDVM_TESTDATA/tokenizer (default: the source tree's ../shared/testdata/tokenizer),
// $PDVM_MODEL (default: models/SmolLM2-135M-Instruct.Q4_1.gguf in the source tree).
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/tokenizer.h"

namespace {

struct FuzzTokenizer {
  pdvm::Tokenizer tokenizer;
  std::array<bool, 256> dropped_bytes{};
};

FuzzTokenizer with_dropped_bytes(pdvm::Tokenizer tokenizer) {
  FuzzTokenizer out{std::move(tokenizer), {}};
  if (out.tokenizer.kind() != pdvm::TokenizerKind::kByteLevelBpe) return out;
  for (int byte = 0; byte < 256; ++byte) {
    out.dropped_bytes[byte] = out.tokenizer.encode(std::string(1, static_cast<char>(byte)), false, false).empty();
  }
  return out;
}

std::vector<FuzzTokenizer> load_tokenizers() {
  const char* data_env = std::getenv("PDVM_TESTDATA");
  const std::filesystem::path data_dir =
      data_env ? std::filesystem::path(data_env) : std::filesystem::path(PDVM_SOURCE_DIR).parent_path() / "shared" / "testdata";
  const char* model_env = std::getenv("PDVM_MODEL");
  const std::filesystem::path model =
      model_env ? std::filesystem::path(model_env) : std::filesystem::path(PDVM_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  std::vector<FuzzTokenizer> tokenizers;
  for (const char* name : {"ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-starcoder.gguf"}) {
    // A missing vocabulary is a broken setup, not a finding: let the exception end the run.
    tokenizers.push_back(with_dropped_bytes(pdvm::Tokenizer::from_gguf(pdvm::GgufFile::open(data_dir / "tokenizer" / name))));
  }
  if (std::filesystem::exists(model)) {
    tokenizers.push_back(with_dropped_bytes(pdvm::Tokenizer::from_gguf(pdvm::GgufFile::open(model))));
  }
  return tokenizers;
}

const std::vector<FuzzTokenizer>& tokenizers() {
  static const std::vector<FuzzTokenizer> all = load_tokenizers();
  return all;
}

void check_encode(const FuzzTokenizer& fuzz, std::string_view text, bool add_special, bool parse_special) {
  const pdvm::Tokenizer& tokenizer = fuzz.tokenizer;
  const std::vector<int32_t> ids = tokenizer.encode(text, add_special, parse_special);
  for (int32_t id : ids) {
    if (id < 0 || id >= tokenizer.n_vocab()) __builtin_trap();
  }
  const std::string decoded = tokenizer.decode(ids);
  // With parse_special, control tokens written in the text decode to nothing.
  if (parse_special) return;
  std::string expected;
  for (char c : text) {
    if (!fuzz.dropped_bytes[static_cast<unsigned char>(c)]) expected += c;
  }
  if (tokenizer.kind() == pdvm::TokenizerKind::kSentencePiece) {
    constexpr std::string_view kSpaceMark = "\xE2\x96\x81";
    for (size_t at = expected.find(kSpaceMark); at != std::string::npos; at = expected.find(kSpaceMark, at + 1)) {
      expected.replace(at, kSpaceMark.size(), " ");
    }
  }
  if (decoded != expected) __builtin_trap();
}

// Two bytes per id: mostly ids around the vocabulary (a few below 0 and past the end), and the
// int32 extremes.
std::vector<int32_t> read_ids(const uint8_t* data, size_t size, int32_t n_vocab) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < size; i += 2) {
    const unsigned raw = data[i] | (unsigned{data[i + 1]} << 8);
    if (raw >= 0xFFF0) {
      const int32_t extremes[] = {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max(), n_vocab, -1};
      ids.push_back(extremes[raw % 4]);
    } else {
      ids.push_back(static_cast<int32_t>(raw % (static_cast<unsigned>(n_vocab) + 16)) - 8);
    }
  }
  return ids;
}

void check_stream(const pdvm::Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool text_start) {
  pdvm::StreamingDecoder decoder(tokenizer, text_start);
  std::string streamed;
  std::vector<int32_t> valid;
  for (int32_t id : ids) {
    const bool in_range = id >= 0 && id < tokenizer.n_vocab();
    try {
      streamed += decoder.push(id);
      if (!in_range) __builtin_trap();
      valid.push_back(id);
    } catch (const pdvm::Error& e) {
      if (in_range || e.kind() != pdvm::ErrorKind::kOutOfRange) __builtin_trap();
    }
  }
  streamed += decoder.flush();
  if (text_start) {
    if (streamed != tokenizer.decode(valid)) __builtin_trap();
  } else {
    std::string pieces;
    for (int32_t id : valid) pieces += tokenizer.token_to_piece(id);
    if (streamed != pieces) __builtin_trap();
  }
}

}  // namespace

// Loading the vocabularies takes seconds under the sanitizers: done before the timed inputs.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  const FuzzTokenizer& fuzz = tokenizers()[(flags & 3u) % tokenizers().size()];
  const bool parse_special = flags & 4u;
  const bool add_special = flags & 8u;
  const bool id_mode = flags & 16u;
  if (id_mode) {
    check_stream(fuzz.tokenizer, read_ids(data + 1, size - 1, fuzz.tokenizer.n_vocab()), /*text_start=*/add_special);
  } else {
    check_encode(fuzz, std::string_view(reinterpret_cast<const char*>(data + 1), size - 1), add_special, parse_special);
  }
  return 0;
}
