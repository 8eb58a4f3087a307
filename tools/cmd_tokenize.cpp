// `pdvm tokenize MODEL TEXT`: shows how a model's tokenizer splits text (id, decoded bytes,
// vocabulary text per token). --jsonl runs many texts at once for differential tests.
#include <fmt/format.h>

#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "command.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/tokenizer.h"

namespace pdvm::cli {
namespace {

struct Options {
  std::string model;
  std::string text;
  std::string jsonl;
  bool no_special = false;
  bool no_bos = false;
  bool ids_only = false;
};

// Printable ASCII and valid multi-byte UTF-8 as they are; everything else escaped.
std::string escape(std::string_view bytes) {
  std::string out;
  for (size_t pos = 0; pos < bytes.size();) {
    const auto c = static_cast<unsigned char>(bytes[pos]);
    size_t length = 1;
    if (c >= 0xC0) {
      length = (c >= 0xF0) ? 4 : (c >= 0xE0) ? 3 : 2;
      bool valid = pos + length <= bytes.size();
      for (size_t i = 1; valid && i < length; ++i) valid = (static_cast<unsigned char>(bytes[pos + i]) & 0xC0) == 0x80;
      if (!valid) length = 1;
    }
    if (length > 1) {
      out.append(bytes.substr(pos, length));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\\' || c == '\'') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
    pos += length;
  }
  return out;
}

// One JSONL line: a JSON string, or an array of byte values for text that is not valid UTF-8.
std::string text_of_line(const std::string& line, size_t line_number, const std::string& path) {
  const nlohmann::json doc = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (doc.is_string()) return doc.get<std::string>();
  if (doc.is_array()) {
    std::string bytes;
    for (const auto& value : doc) {
      if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > 255) {
        throw_error(ErrorKind::kInvalidArgument, fmt::format("{}:{}: byte arrays hold integers 0..255", path, line_number));
      }
      bytes += static_cast<char>(value.get<int>());
    }
    return bytes;
  }
  throw_error(ErrorKind::kInvalidArgument,
              fmt::format("{}:{}: expected a JSON string or an array of bytes per line", path, line_number));
}

int run_jsonl(const Tokenizer& tokenizer, const Options& opt) {
  std::ifstream in(opt.jsonl, std::ios::binary);
  if (!in) throw_error(ErrorKind::kIo, "cannot open " + opt.jsonl);
  size_t line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (line.empty()) continue;
    const std::vector<int32_t> ids =
        tokenizer.encode(text_of_line(line, line_number, opt.jsonl), !opt.no_bos, !opt.no_special);
    std::cout << nlohmann::json(ids).dump() << '\n';
  }
  std::cout << std::flush;
  return 0;
}

int run(const Options& opt) {
  const GgufFile file = GgufFile::open(opt.model);
  const Tokenizer tokenizer = Tokenizer::from_gguf(file);
  if (!opt.jsonl.empty()) return run_jsonl(tokenizer, opt);
  const std::vector<int32_t> ids = tokenizer.encode(opt.text, !opt.no_bos, !opt.no_special);
  if (opt.ids_only) {
    std::cout << fmt::format("{}\n", fmt::join(ids, " "));
    return 0;
  }
  std::cout << fmt::format("tokenizer {} (pre {}), {} tokens in vocabulary; {} tokens:\n", tokenizer.model_name(),
                           tokenizer.pre_name(), tokenizer.n_vocab(), ids.size());
  std::cout << fmt::format("{:>8}  {:<24}  {}\n", "id", "piece", "vocabulary text");
  for (int32_t id : ids) {
    const std::string piece = "'" + escape(tokenizer.token_to_piece(id)) + "'";
    std::string note = escape(tokenizer.token_text(id));
    if (tokenizer.is_control(id)) note += "  (control)";
    std::cout << fmt::format("{:>8}  {:<24}  {}\n", id, piece, note);
  }
  return 0;
}

PDVM_REGISTER_COMMAND("tokenize", "show the tokens a model's tokenizer makes of a text", [](CLI::App& app) {
  auto opt = std::make_shared<Options>();
  app.add_option("model", opt->model, "GGUF model (or vocabulary) file")->required();
  app.add_option("text", opt->text, "text to tokenize");
  app.add_option("--jsonl", opt->jsonl, "tokenize each line (a JSON string or byte array), print a JSON id array per line");
  app.add_flag("--no-special", opt->no_special, "treat control-token text such as <|im_end|> as plain text");
  app.add_flag("--no-bos", opt->no_bos, "do not add BOS/EOS even where the model asks for them");
  app.add_flag("--ids-only", opt->ids_only, "print only the ids, space separated");
  return [opt] { return run(*opt); };
});

}  // namespace
}  // namespace pdvm::cli
