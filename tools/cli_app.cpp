// The `pdvm` command line: every registered sub-command declared on one CLI::App. Kept apart
// from main() so the CLI fuzzer (fuzz/cli_fuzz.cpp) parses exactly what the binary parses.
#include "command.h"

#include <limits>

#include "cli_common.h"

namespace pdvm::cli {

std::vector<Command>& command_registry() {
  static std::vector<Command> registry;
  return registry;
}

void build_app(CLI::App& app, std::function<int()>& action) {
  app.require_subcommand(1);
  app.set_version_flag("--version", "pdvm 0.1.0");
  for (auto& command : command_registry()) {
    CLI::App* sub = app.add_subcommand(command.name, command.description);
    auto make_action = command.setup(*sub);
    for (CLI::Option* option : sub->get_options()) {
      // CLI11's type names: INT (signed targets), UINT (unsigned), possibly with validators after ':'
      const std::string type = option->get_type_name();
      if (type.rfind("INT", 0) == 0) {
        option->check(integer_in(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()));
      } else if (type.rfind("UINT", 0) == 0) {
        option->check(unsigned_integer());
      }
    }
    sub->callback([&action, make_action] { action = make_action; });
  }
}

}  // namespace pdvm::cli
