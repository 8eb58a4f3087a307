// The merge loop SentencePiece BPE and byte-level BPE share: symbols sit in a linked list,
// every adjacent pair that may merge waits in a priority queue (best score first, leftmost
// on ties), and stale entries are skipped when popped. O(n log n) in the word length, so a
// long run of text without pre-tokenizer splits stays fast.
#pragma once

#include <cstdint>
#include <optional>
#include <queue>
#include <vector>

namespace pdvm::tokenizer_detail {

struct MergeSymbol {
  uint32_t start = 0;   // byte offset in the text being encoded
  uint32_t length = 0;  // bytes
  int32_t id = -1;      // token id of this text, -1 if the vocabulary has none
  int32_t prev = -1;
  int32_t next = -1;
};

struct MergeResult {
  float score;     // higher merges first
  int32_t id;      // token id of the merged text
};

// Links `symbols` (given in text order, prev/next ignored) and merges adjacent pairs while
// lookup(left, right) -> std::optional<MergeResult> offers a merge. on_merge(left, right) is
// called before each merge with both parts. Afterwards the surviving symbols are reachable
// from index 0 through `next`; merged-away ones have length 0.
template <typename Lookup, typename OnMerge>
void merge_symbols(std::vector<MergeSymbol>& symbols, Lookup&& lookup, OnMerge&& on_merge) {
  const auto count = static_cast<int32_t>(symbols.size());
  for (int32_t i = 0; i < count; ++i) {
    symbols[i].prev = i - 1;
    symbols[i].next = i + 1 < count ? i + 1 : -1;
  }
  struct Candidate {
    float score;
    int32_t left;
    int32_t right;
    uint32_t length;  // left + right length when queued, to detect stale entries
    int32_t id;
  };
  auto worse = [&](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score < b.score;
    return symbols[a.left].start > symbols[b.left].start;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  auto consider = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const std::optional<MergeResult> merge = lookup(symbols[left], symbols[right]);
    if (merge) {
      queue.push({merge->score, left, right, symbols[left].length + symbols[right].length, merge->id});
    }
  };
  for (int32_t i = 0; i + 1 < count; ++i) consider(i, i + 1);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    MergeSymbol& left = symbols[top.left];
    MergeSymbol& right = symbols[top.right];
    if (left.length == 0 || right.length == 0 || left.next != top.right ||
        left.length + right.length != top.length) {
      continue;
    }
    on_merge(left, right);
    left.length += right.length;
    left.id = top.id;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    consider(left.prev, top.left);
    consider(top.left, left.next);
  }
}

}  // namespace pdvm::tokenizer_detail
