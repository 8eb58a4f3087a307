// libFuzzer target for chat templates. Input: a flags byte, then sections separated by 0x1E.
//  * flags bit 0 set: the first section is a template text for ChatTemplate::from_jinja, which
//    must recognize a family or raise Error(kUnsupported); clear: flags >> 1 picks a family name.
//  * the second section is the BOS text, then the EOS text, the default system prompt, and the
//    messages: each one's first byte picks its role (system, user, assistant, or the rest of
//    the message as an unknown role up to the first ':'), the rest is its content.
// Rendering must succeed or raise Error(kInvalidArgument).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/chat_template.h"
#include "pdvm/error.h"

namespace {

std::vector<std::string_view> split_sections(std::string_view input) {
  std::vector<std::string_view> sections;
  for (;;) {
    const size_t end = input.find('\x1e');
    sections.push_back(input.substr(0, end));
    if (end == std::string_view::npos) return sections;
    input.remove_prefix(end + 1);
  }
}

pdvm::ChatMessage parse_message(std::string_view section) {
  if (section.empty()) return {"user", ""};
  const char selector = section.front();
  section.remove_prefix(1);
  switch (static_cast<unsigned char>(selector) % 4) {
    case 0:
      return {"system", std::string(section)};
    case 1:
      return {"user", std::string(section)};
    case 2:
      return {"assistant", std::string(section)};
    default: {
      const size_t colon = section.find(':');
      if (colon == std::string_view::npos) return {std::string(section), ""};
      return {std::string(section.substr(0, colon)), std::string(section.substr(colon + 1))};
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  const std::vector<std::string_view> sections =
      split_sections(std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
  size_t next = 0;
  std::optional<pdvm::ChatTemplate> chat_template;
  if (flags & 1u) {
    try {
      chat_template = pdvm::ChatTemplate::from_jinja(sections[next++]);
    } catch (const pdvm::Error& e) {
      if (e.kind() != pdvm::ErrorKind::kUnsupported) __builtin_trap();
      return 0;
    }
  } else {
    const auto& names = pdvm::ChatTemplate::names();
    chat_template = pdvm::ChatTemplate::from_name(names[(flags >> 1) % names.size()]);
  }
  auto section = [&](size_t i) { return i < sections.size() ? std::string(sections[i]) : std::string(); };
  chat_template->set_special_tokens(section(next), section(next + 1));
  chat_template->set_default_system_prompt(section(next + 2));
  std::vector<pdvm::ChatMessage> messages;
  for (size_t i = next + 3; i < sections.size(); ++i) messages.push_back(parse_message(sections[i]));
  try {
    chat_template->render(messages, /*add_generation_prompt=*/flags & 0x80u);
  } catch (const pdvm::Error& e) {
    if (e.kind() != pdvm::ErrorKind::kInvalidArgument) __builtin_trap();
  }
  return 0;
}
