// StopStringFilter: text streamed in random pieces comes out as the text before the first stop
// string, never showing any part of it, and is held back only while it could still be one.
#include <gtest/gtest.h>

#include "pdvm/error.h"
#include "pdvm/generator.h"
#include "test_support.h"

namespace pdvm {
namespace {

std::string random_text(size_t n, std::string_view alphabet) {
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  std::string s;
  for (size_t i = 0; i < n; ++i) s += alphabet[pick(test::rng())];
  return s;
}

TEST(StopStrings, StreamedPiecesStopBeforeTheFirstOccurrence) {
  std::uniform_int_distribution<size_t> piece(1, 6);
  for (int trial = 0; trial < 2000; ++trial) {
    // A small alphabet makes partial matches and overlapping stop strings frequent.
    std::vector<std::string> stops{random_text(1 + trial % 4, "abc"), random_text(2 + trial % 3, "abc")};
    const std::string text = random_text(60, "abcd");
    // Cut at the occurrence that completes first (the earliest-starting one among those).
    size_t first = std::string::npos;
    for (size_t end = 1; end <= text.size() && first == std::string::npos; ++end) {
      for (const auto& s : stops) {
        if (s.size() <= end && text.compare(end - s.size(), s.size(), s) == 0 &&
            (first == std::string::npos || end - s.size() < first)) {
          first = end - s.size();
        }
      }
    }
    const std::string want = first == std::string::npos ? text : text.substr(0, first);

    StopStringFilter filter(stops);
    std::string got;
    size_t pos = 0;
    while (pos < text.size() && !filter.stopped()) {
      const size_t n = std::min(piece(test::rng()), text.size() - pos);
      const std::string released = filter.push(std::string_view(text).substr(pos, n));
      pos += n;
      got += released;
      // Everything released is final: it is a prefix of the expected output.
      ASSERT_EQ(want.compare(0, got.size(), got), 0) << "released past the stop: " << got;
      // Whatever is held back could still become a stop string.
      const std::string held = text.substr(got.size(), pos - got.size());
      if (!filter.stopped() && !held.empty()) {
        bool could_match = false;
        for (const auto& s : stops) could_match |= s.compare(0, held.size(), held) == 0 && held.size() < s.size();
        ASSERT_TRUE(could_match) << "held back '" << held << "' which no stop string starts with";
      }
    }
    got += filter.finish();
    EXPECT_EQ(got, want);
    EXPECT_EQ(filter.stopped(), first != std::string::npos);
  }
}

TEST(StopStrings, WithoutStopStringsEverythingPassesAtOnce) {
  StopStringFilter filter({});
  EXPECT_EQ(filter.push("Hello"), "Hello");
  EXPECT_EQ(filter.push(", world"), ", world");
  EXPECT_EQ(filter.finish(), "");
  EXPECT_FALSE(filter.stopped());
}

TEST(StopStrings, EmptyStopStringIsRejected) {
  EXPECT_THROW(StopStringFilter({"x", ""}), Error);
}

}  // namespace
}  // namespace pdvm
