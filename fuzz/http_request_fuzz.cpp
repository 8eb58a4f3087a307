// libFuzzer target for cpp-httplib's server-side request handling, the layer in front of
// `pdvm serve`: the input is what one client sends on a keep-alive connection, given to
// httplib::Server::process_request (protected; reached through a subclass) over an in-memory
// Stream, request after request, as httplib's own connection loop does. The server has pdvm's
// routes, body limit and error handler shape. Checks: no crash or sanitizer report, every reply
// starts with an HTTP/1.1 status line, and a request that reaches a handler has a body of its
// declared Content-Length (unless chunked or multipart) within the limit.
//
// Debian builds cpp-httplib as a shared library (libcpp-httplib.so.0.11; its httplib.h is the
// declarations only), so the parser itself is not instrumented: libFuzzer gets no edge coverage
// from it and ASan checks only the libc calls it makes (memcpy, strlen, ...). The fuzzer is
// guided by the harness's branches and by the comparisons the library makes through libc
// (strcmp/memcmp hooks), not by the parser's own branches. docs/testing.md says what that means.
#include <httplib.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace {

constexpr size_t kMaxBody = 4096;  // small, so that 413 is reachable from short inputs
constexpr int kMaxRequestsPerConnection = 8;

void require(bool condition) {
  if (!condition) std::abort();
}

// One client connection: reads come from the fuzz input, writes are collected.
class ConnectionStream : public httplib::Stream {
 public:
  explicit ConnectionStream(std::string_view input) : input_(input) {}

  bool is_readable() const override { return true; }
  bool is_writable() const override { return true; }
  ssize_t read(char* ptr, size_t size) override {
    const size_t n = std::min(size, input_.size() - position_);
    std::memcpy(ptr, input_.data() + position_, n);
    position_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    written_.append(ptr, size);
    return static_cast<ssize_t>(size);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip = "127.0.0.1";
    port = 40000;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    ip = "127.0.0.1";
    port = 8080;
  }
  socket_t socket() const override { return INVALID_SOCKET; }

  bool exhausted() const { return position_ == input_.size(); }
  const std::string& written() const { return written_; }
  void clear_written() { written_.clear(); }

 private:
  std::string_view input_;
  size_t position_ = 0;
  std::string written_;
};

bool all_digits(const std::string& s) {
  if (s.empty() || s.size() > 18) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

void check_request(const httplib::Request& req) {
  require(req.body.size() <= kMaxBody);
  const std::string length = req.get_header_value("Content-Length");
  const bool chunked = strcasecmp(req.get_header_value("Transfer-Encoding").c_str(), "chunked") == 0;
  // multipart/form-data bodies are parsed into req.files instead of req.body.
  if (!chunked && !req.is_multipart_form_data() && all_digits(length)) {
    require(req.body.size() == std::strtoull(length.c_str(), nullptr, 10));
  }
}

class FuzzServer : public httplib::Server {
 public:
  FuzzServer() {
    set_payload_max_length(kMaxBody);
    const auto generation = [](const httplib::Request& req, httplib::Response& res) {
      check_request(req);
      res.set_content(std::to_string(req.body.size()), "application/json");
    };
    Post("/v1/completions", generation);
    Post("/v1/chat/completions", generation);
    Get("/v1/models", [](const httplib::Request&, httplib::Response& res) { res.set_content("{}", "application/json"); });
    Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content("{}", "application/json"); });
    set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (res.body.empty()) res.set_content(R"({"error":{}})", "application/json");
    });
  }

  void serve(ConnectionStream& stream) {
    for (int i = 0; i < kMaxRequestsPerConnection && !stream.exhausted(); ++i) {
      bool connection_closed = false;
      stream.clear_written();
      const bool ok = process_request(stream, /*close_connection=*/false, connection_closed, nullptr);
      check_reply(stream.written());
      if (!ok || connection_closed) break;
    }
  }

 private:
  static void check_reply(const std::string& reply) {
    if (reply.empty()) return;  // the input ended before a request line
    require(reply.size() >= 12 && reply.compare(0, 9, "HTTP/1.1 ") == 0);
    for (size_t i = 9; i < 12; ++i) require(reply[i] >= '0' && reply[i] <= '9');
    switch (reply[9]) {  // distinct branches per status class guide the fuzzer
      case '1': break;
      case '2': break;
      case '3': break;
      case '4': break;
      case '5': break;
      default: require(false);
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static FuzzServer server;
  ConnectionStream stream(std::string_view(reinterpret_cast<const char*>(data), size));
  server.serve(stream);
  return 0;
}
