// Sub-commands of the `pdvm` CLI register themselves here, one file each (tools/cmd_*.cpp).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace pdvm::cli {

// Called with the sub-command's CLI::App to declare its flags; returns the action to run
// after parsing. The action returns the process exit code.
using CommandSetup = std::function<std::function<int()>(CLI::App& app)>;

struct Command {
  std::string name;
  std::string description;
  CommandSetup setup;
};

std::vector<Command>& command_registry();

// Declares every registered sub-command on `app`; parsing sets `action` to the chosen one's.
void build_app(CLI::App& app, std::function<int()>& action);

struct CommandRegistrar {
  CommandRegistrar(std::string name, std::string description, CommandSetup setup) {
    command_registry().push_back({std::move(name), std::move(description), std::move(setup)});
  }
};

}  // namespace pdvm::cli

#define PDVM_COMMAND_CAT2(a, b) a##b
#define PDVM_COMMAND_CAT(a, b) PDVM_COMMAND_CAT2(a, b)
#define PDVM_REGISTER_COMMAND(name, description, setup) \
  static ::pdvm::cli::CommandRegistrar PDVM_COMMAND_CAT(pdvm_command_, __LINE__)(name, description, setup)
