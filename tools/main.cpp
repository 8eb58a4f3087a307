// Entry point of the `pdvm` CLI: dispatches to the registered sub-commands and turns every
// error into a one-line message and a non-zero exit code.
#include <cstdio>
#include <exception>
#include <memory>

#include "command.h"
#include "format/mapped_file.h"
#include "pdvm/error.h"

int main(int argc, char** argv) {
  pdvm::install_mapped_file_fault_handler();
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
