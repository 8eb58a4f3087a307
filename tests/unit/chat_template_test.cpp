// Chat formats: renderings written out by hand from each family's template definition, and
// recognition of real models' template texts (tests/data/chat_templates). The differential
// test against the jinja2 rendering of those same texts is tests/python/test_chat_template.py.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "pdvm/chat_template.h"
#include "pdvm/error.h"
#include "test_support.h"

namespace pdvm {
namespace {

std::string read_template(const std::string& name) {
  std::ifstream in(test::source_dir() / "tests/data/chat_templates" / (name + ".jinja"), std::ios::binary);
  EXPECT_TRUE(in) << name;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

const std::vector<ChatMessage> kWithSystem{
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", " Why? "}};
const std::vector<ChatMessage> kWithoutSystem{{"user", "Hi"}, {"assistant", "Hello!"}, {"user", " Why? "}};

TEST(ChatTemplate, ChatMLWithTheSmolLM2DefaultSystemPrompt) {
  ChatTemplate t = ChatTemplate::from_jinja(read_template("smollm2"));
  EXPECT_EQ(t.format(), ChatFormat::kChatML);
  EXPECT_EQ(t.default_system_prompt(), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(t.render(kWithoutSystem, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
            "<|im_start|>user\n Why? <|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render(kWithSystem, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n Why? <|im_end|>\n");
  EXPECT_EQ(t.render({}, true), "<|im_start|>assistant\n");
}

TEST(ChatTemplate, ChatMLDefaultSystemPromptsOfOtherModels) {
  EXPECT_EQ(ChatTemplate::from_jinja(read_template("qwen2")).default_system_prompt(), "You are a helpful assistant.");
  ChatTemplate plain = ChatTemplate::from_jinja(read_template("openhermes"));
  EXPECT_EQ(plain.format(), ChatFormat::kChatML);
  EXPECT_EQ(plain.default_system_prompt(), "");
  EXPECT_EQ(plain.render(kWithoutSystem, true),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
            "<|im_start|>user\n Why? <|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, Llama2) {
  ChatTemplate t = ChatTemplate::from_jinja(read_template("llama2"));
  EXPECT_EQ(t.format(), ChatFormat::kLlama2);
  t.set_special_tokens("<s>", "</s>");
  EXPECT_EQ(t.render(kWithSystem, true),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Why? [/INST]");
  EXPECT_EQ(t.render(kWithoutSystem, true), "<s>[INST] Hi [/INST] Hello! </s><s>[INST] Why? [/INST]");
  const std::vector<ChatMessage> two_users{{"user", "a"}, {"user", "b"}};
  EXPECT_THROW(t.render(two_users, true), Error);
}

TEST(ChatTemplate, Llama3) {
  ChatTemplate t = ChatTemplate::from_jinja(read_template("llama3"));
  EXPECT_EQ(t.format(), ChatFormat::kLlama3);
  t.set_special_tokens("<|begin_of_text|>", "<|end_of_text|>");
  EXPECT_EQ(t.render(kWithSystem, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhy?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, Mistral) {
  ChatTemplate t = ChatTemplate::from_jinja(read_template("mistral"));
  EXPECT_EQ(t.format(), ChatFormat::kMistral);
  t.set_special_tokens("<s>", "</s>");
  EXPECT_EQ(t.render(kWithoutSystem, true), "<s>[INST] Hi [/INST]Hello!</s>[INST]  Why?  [/INST]");
  EXPECT_EQ(t.render(kWithSystem, true), "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST]  Why?  [/INST]");
}

TEST(ChatTemplate, Zephyr) {
  ChatTemplate t = ChatTemplate::from_jinja(read_template("zephyr"));
  EXPECT_EQ(t.format(), ChatFormat::kZephyr);
  t.set_special_tokens("<s>", "</s>");
  EXPECT_EQ(t.render(kWithSystem, true),
            "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n<|user|>\n Why? </s>\n"
            "<|assistant|>\n");
}

TEST(ChatTemplate, UnknownTemplatesNameTheFlag) {
  for (const char* name : {"gemma", "phi3"}) {
    try {
      ChatTemplate::from_jinja(read_template(name));
      ADD_FAILURE() << name << " was recognized";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
      EXPECT_NE(std::string(e.what()).find("--chat-template"), std::string::npos) << e.what();
    }
  }
}

TEST(ChatTemplate, ByName) {
  for (const std::string& name : ChatTemplate::names()) EXPECT_EQ(ChatTemplate::from_name(name).name(), name);
  EXPECT_THROW(ChatTemplate::from_name("alpaca"), Error);
  const std::vector<ChatMessage> bad_role{{"tool", "x"}};
  EXPECT_THROW(ChatTemplate::from_name("chatml").render(bad_role, true), Error);
}

}  // namespace
}  // namespace pdvm
