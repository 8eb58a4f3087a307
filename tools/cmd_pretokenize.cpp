// `pdvm pretokenize PRE TEXT`: shows how the byte-level BPE pre-tokenizer named by
// tokenizer.ggml.pre cuts text into words, before any merge. --jsonl runs many texts at once
// for differential tests.
#include <fmt/format.h>

#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "command.h"
#include "pdvm/error.h"
#include "tokenizer/pretokenizer.h"

namespace pdvm::cli {
namespace {

struct Options {
  std::string pre;
  std::string text;
  std::string jsonl;
};

nlohmann::json pieces_json(const tokenizer_detail::PreTokenizer& pre, std::string_view text) {
  nlohmann::json pieces = nlohmann::json::array();
  for (std::string_view piece : pre.split(text)) pieces.push_back(std::string(piece));
  return pieces;
}

int run(const Options& opt) {
  const tokenizer_detail::PreTokenizer pre(opt.pre);
  // Pieces of invalid UTF-8 print with U+FFFD in place of the bad bytes.
  const auto dump = [](const nlohmann::json& doc) {
    return doc.dump(-1, ' ', /*ensure_ascii=*/true, nlohmann::json::error_handler_t::replace);
  };
  if (opt.jsonl.empty()) {
    std::cout << dump(pieces_json(pre, opt.text)) << '\n';
    return 0;
  }
  std::ifstream in(opt.jsonl, std::ios::binary);
  if (!in) throw_error(ErrorKind::kIo, "cannot open " + opt.jsonl);
  size_t line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (line.empty()) continue;
    const nlohmann::json doc = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!doc.is_string()) {
      throw_error(ErrorKind::kInvalidArgument, fmt::format("{}:{}: expected a JSON string", opt.jsonl, line_number));
    }
    std::cout << dump(pieces_json(pre, doc.get<std::string>())) << '\n';
  }
  std::cout << std::flush;
  return 0;
}

PDVM_REGISTER_COMMAND("pretokenize", "show the words a BPE pre-tokenizer (tokenizer.ggml.pre) cuts text into",
                      [](CLI::App& app) {
                        auto opt = std::make_shared<Options>();
                        app.add_option("pre", opt->pre, "pre-tokenizer name, e.g. gpt2, llama-bpe, qwen2, smollm")
                            ->required();
                        app.add_option("text", opt->text, "text to split");
                        app.add_option("--jsonl", opt->jsonl,
                                       "split each line (a JSON string), print a JSON array of pieces per line");
                        return [opt] { return run(*opt); };
                      });

}  // namespace
}  // namespace pdvm::cli
