// libFuzzer target for the command line: the input, split at NUL bytes, is argv (after
// "pdvm"). Every sub-command's flags are parsed exactly as the binary does (build_app) but no
// action runs; parsing must end in success or a CLI11 error, never anything else.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "command.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args{"pdvm"};
  std::string current;
  for (size_t i = 0; i < size && args.size() < 64; ++i) {
    if (data[i] == 0) {
      args.push_back(std::move(current));
      current.clear();
    } else {
      current += static_cast<char>(data[i]);
    }
  }
  if (!current.empty()) args.push_back(std::move(current));
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);

  CLI::App app{"pdvm"};
  std::function<int()> action;
  pdvm::cli::build_app(app, action);
  try {
    app.parse(static_cast<int>(args.size()), argv.data());
    // A successful parse chose exactly one sub-command.
    if (!action) __builtin_trap();
  } catch (const CLI::Error&) {
    // ParseError and the help/version requests: what main() turns into messages.
  }
  return 0;
}
