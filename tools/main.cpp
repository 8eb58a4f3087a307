// Entry point of the `pdvm` CLI: dispatches to the registered sub-commands and turns every
// error into a one-line message and a non-zero exit code.
#include <cstdio>
#include <exception>
#include <memory>

#include "command.h"
#include "pdvm/error.h"

namespace pdvm::cli {

std::vector<Command>& command_registry() {
  static std::vector<Command> registry;
  return registry;
}

}  // namespace pdvm::cli

int main(int argc, char** argv) {
  CLI::App app{"pdvm: fast LLaMA-family inference from GGUF files"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "pdvm 0.1.0");
  std::function<int()> action;
  for (auto& command : pdvm::cli::command_registry()) {
    CLI::App* sub = app.add_subcommand(command.name, command.description);
    auto make_action = command.setup(*sub);
    sub->callback([&action, make_action] { action = make_action; });
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other error.
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
