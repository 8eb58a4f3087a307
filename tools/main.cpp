// Entry point of the `pdvm` CLI: dispatches to the registered sub-commands and turns every
// error into a one-line message and a non-zero exit code.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string_view>

#include "command.h"
#include "format/mapped_file.h"
#include "pdvm/error.h"

namespace {

// Whether a --tp value other than 1 is given ("--tp 2", "--tp=2", bench's "--tp 1,2").
bool splits_over_ranks(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view value;
    if (arg == "--tp" && i + 1 < argc) value = argv[i + 1];
    else if (arg.starts_with("--tp=")) value = arg.substr(5);
    else continue;
    if (value.find_first_not_of("1, ") != std::string_view::npos) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  pdvm::install_mapped_file_fault_handler();
  // CUDA loads kernels lazily by default, and loading one may wait for its device to idle:
  // with NCCL that device can be waiting for a peer GPU whose rank is itself stuck loading,
  // which hung 2-GPU prefill. Load every kernel when CUDA starts instead (unless set).
  if (splits_over_ranks(argc, argv)) setenv("CUDA_MODULE_LOADING", "EAGER", 0);
  CLI::App app{"pdvm: fast LLaMA-family inference from GGUF files"};
  std::function<int()> action;
  pdvm::cli::build_app(app, action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other error. CLI11 reports a mistyped command only as "a
    // subcommand is required": name it.
    if (app.get_subcommands().empty()) {
      if (argc < 2) {
        std::fprintf(stderr, "pdvm: error: no command given: pdvm COMMAND [OPTIONS] (see --help)\n");
      } else if (argv[1][0] == '-') {
        std::fprintf(stderr, "pdvm: error: unknown option '%s': options go after the command (see --help)\n", argv[1]);
      } else {
        std::fprintf(stderr, "pdvm: error: unknown command '%s' (see --help)\n", argv[1]);
      }
      return 2;
    }
    std::fprintf(stderr, "pdvm: error: %s (see --help)\n", e.what());
    return 2;
  }
  try {
    return action();
  } catch (const pdvm::Error& e) {
    std::fprintf(stderr, "pdvm: error: %s\n", e.what());
    return e.kind() == pdvm::ErrorKind::kInvalidArgument ? 2 : 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "pdvm: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pdvm: error: %s\n", e.what());
    return 1;
  }
}
