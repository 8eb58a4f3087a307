// `pdvm serve`: an OpenAI-compatible HTTP server (cpp-httplib) for one model. All generation
// goes through one Session: requests are answered one at a time (a mutex, not a fair queue), so
// a long generation delays the next one; /health and /v1/models answer at once. Request bodies
// are parsed by engine/openai_api.h, which the fuzzer drives too.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>

#include "cli_common.h"
#include "command.h"
#include "engine/openai_api.h"
#include "pdvm/chat_template.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/tokenizer.h"

namespace pdvm::cli {
namespace {

struct ServeOptions {
  ModelFlags model;
  SamplingFlags sampling;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string chat_template;
  int64_t max_body_bytes = int64_t{4} << 20;
};

constexpr const char* kJson = "application/json";

int64_t unix_now() { return static_cast<int64_t>(std::time(nullptr)); }

void send_error(httplib::Response& res, int status, std::string_view message, std::string_view type,
                std::string_view param = {}) {
  res.status = status;
  res.set_content(api::error_json(message, type, param), kJson);
}

// The model, its one Session and the generation state every request shares.
class ApiServer {
 public:
  ApiServer(const ServeOptions& opt, const SessionOptions& session_options)
      : session_(session_options),
        tokenizer_(Tokenizer::from_gguf(session_.gguf())),
        generator_(session_, tokenizer_),
        model_id_(std::filesystem::path(session_options.model_path).stem().string()),
        started_(unix_now()) {
    try {
      chat_template_.emplace(ChatTemplate::for_model(session_.gguf(), tokenizer_, opt.chat_template));
    } catch (const Error& e) {
      if (!opt.chat_template.empty()) throw;
      chat_template_error_ = e.what();  // completions still work; chat requests get this
    }
    defaults_.sampling = opt.sampling.params;
    default_seed_ = opt.sampling.seed;
  }

  void cancel_all() {
    shutting_down_ = true;
    cancel_ = true;
  }

  void handle_generation(api::Endpoint endpoint, const httplib::Request& req, httplib::Response& res) {
    const api::CompletionRequest request = api::parse_request(endpoint, req.body, defaults_);
    GenerationOptions generation;
    generation.n_predict = request.max_tokens;
    generation.stop_strings = request.stop;
    generation.sampling = request.sampling;
    generation.reuse_cached_prefix = request.cache_prompt;
    // A request without a seed gets serve's --seed, else a fresh random one.
    const std::optional<uint64_t> seed = request.seed ? request.seed : default_seed_;
    generation.sampling.seed = seed ? *seed : (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
    const api::ResponseMeta meta{endpoint, next_id(endpoint), unix_now(), model_id_};
    std::vector<int32_t> tokens;
    {
      std::lock_guard lock(mutex_);
      tokens = prompt_tokens(request);
    }
    if (!request.stream) {
      std::lock_guard lock(mutex_);
      cancel_ = shutting_down_.load();
      const GenerationStats stats = generator_.generate(tokens, generation, [](std::string_view) {}, &cancel_);
      res.set_content(api::completion_json(meta, stats.text, stats.stop_reason, usage(tokens, stats)), kJson);
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    const bool include_usage = request.include_usage;
    res.set_chunked_content_provider(
        "text/event-stream", [this, tokens, generation, meta, include_usage](size_t, httplib::DataSink& sink) {
          std::lock_guard lock(mutex_);
          cancel_ = shutting_down_.load();
          // A failed write means the client went away: stop generating for nobody.
          const auto send = [&](const std::string& event) {
            if (!cancel_ && !sink.write(event.data(), event.size())) cancel_ = true;
          };
          try {
            bool first = true;
            const GenerationStats stats = generator_.generate(
                tokens, generation,
                [&](std::string_view text) {
                  send(api::stream_text_event(meta, text, first));
                  first = false;
                },
                &cancel_);
            send(api::stream_finish_event(meta, stats.stop_reason));
            if (include_usage) send(api::stream_usage_event(meta, usage(tokens, stats)));
          } catch (const std::exception& e) {
            send(api::stream_error_event(e.what(), "server_error"));
          }
          send(std::string(api::kStreamDone));
          sink.done();
          return true;
        });
  }

  std::string models() const { return api::models_json(model_id_, started_); }

 private:
  std::vector<int32_t> prompt_tokens(const api::CompletionRequest& request) const {
    std::vector<int32_t> tokens;
    if (request.endpoint == api::Endpoint::kChatCompletions) {
      if (!chat_template_) {
        throw api::RequestError(400, api::kInvalidRequest,
                                chat_template_error_ + " (start pdvm serve with --chat-template NAME)", "messages");
      }
      std::string rendered;
      try {
        rendered = chat_template_->render(request.messages, /*add_generation_prompt=*/true);
      } catch (const Error& e) {
        throw api::RequestError(400, api::kInvalidRequest, e.what(), "messages");
      }
      tokens = tokenize_chat(tokenizer_, rendered);
    } else if (request.prompt_is_tokens) {
      tokens = request.prompt_tokens;
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] >= tokenizer_.n_vocab()) {
          throw api::RequestError(
              400, api::kInvalidRequest,
              fmt::format("prompt[{}] = {} is not a token id (the vocabulary has {})", i, tokens[i], tokenizer_.n_vocab()),
              fmt::format("prompt[{}]", i));
        }
      }
    } else {
      tokens = tokenizer_.encode(request.prompt, /*add_special=*/true, /*parse_special=*/true);
    }
    if (tokens.empty()) throw api::RequestError(400, api::kInvalidRequest, "the prompt is empty", "prompt");
    if (static_cast<int64_t>(tokens.size()) >= session_.n_ctx()) {
      throw api::RequestError(400, api::kInvalidRequest,
                              fmt::format("the prompt is {} tokens, which leaves no room for a completion in the "
                                          "context of {} tokens (start pdvm serve with a larger --ctx)",
                                          tokens.size(), session_.n_ctx()),
                              request.endpoint == api::Endpoint::kChatCompletions ? "messages" : "prompt");
    }
    return tokens;
  }

  static api::Usage usage(const std::vector<int32_t>& tokens, const GenerationStats& stats) {
    return {static_cast<int64_t>(tokens.size()), stats.generated_tokens, stats.reused_tokens};
  }

  std::string next_id(api::Endpoint endpoint) {
    return fmt::format("{}-{:x}{:06x}", endpoint == api::Endpoint::kChatCompletions ? "chatcmpl" : "cmpl", started_,
                       ++request_count_);
  }

  Session session_;
  const Tokenizer tokenizer_;
  Generator generator_;
  std::optional<ChatTemplate> chat_template_;
  std::string chat_template_error_;
  api::RequestDefaults defaults_;
  std::optional<uint64_t> default_seed_;
  const std::string model_id_;
  const int64_t started_;
  std::atomic<uint64_t> request_count_{0};
  std::mutex mutex_;                      // the Session and Generator: one request at a time
  std::atomic<bool> cancel_{false};       // ends the generation in progress
  std::atomic<bool> shutting_down_{false};
};

void add_routes(httplib::Server& http, ApiServer& api_server, int64_t max_body_bytes) {
  const auto generation_route = [&api_server](api::Endpoint endpoint) {
    return [&api_server, endpoint](const httplib::Request& req, httplib::Response& res) {
      try {
        api_server.handle_generation(endpoint, req, res);
      } catch (const api::RequestError& e) {
        send_error(res, e.status(), e.what(), e.type(), e.param());
      } catch (const Error& e) {
        const bool client = e.kind() == ErrorKind::kInvalidArgument || e.kind() == ErrorKind::kOutOfRange;
        send_error(res, client ? 400 : 500, e.what(), client ? api::kInvalidRequest : "server_error");
      }
    };
  };
  http.Post("/v1/completions", generation_route(api::Endpoint::kCompletions));
  http.Post("/v1/chat/completions", generation_route(api::Endpoint::kChatCompletions));
  http.Get("/v1/models", [&api_server](const httplib::Request&, httplib::Response& res) {
    res.set_content(api_server.models(), kJson);
  });
  http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", kJson);
  });
  // Errors httplib produces itself (unknown path, oversized or unparsable request) get the
  // same JSON shape as ours.
  http.set_error_handler([max_body_bytes](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string message;
    switch (res.status) {
      case 404: message = fmt::format("no route for {} {}", req.method, req.path); break;
      case 413: message = fmt::format("the request body is too large (serve --max-body {})", max_body_bytes); break;
      default: message = fmt::format("bad request (HTTP {})", res.status);
    }
    res.set_content(api::error_json(message, res.status >= 500 ? "server_error" : api::kInvalidRequest), kJson);
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string message = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
    }
    send_error(res, 500, message, "server_error");
  });
}

// SIGINT/SIGTERM are blocked from the start (so no thread, the backend's workers and httplib's
// included, is ever interrupted by them) and taken by one thread with sigwait. While the model
// loads, a signal ends the process; once serving, it cancels the generation in progress and
// stops the server, and serve() returns normally.
class StopSignalThread {
 public:
  StopSignalThread() {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGINT);
    sigaddset(&signals_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
    thread_ = std::thread([this] { wait_for_signal(); });
  }
  ~StopSignalThread() { finish(); }
  StopSignalThread(const StopSignalThread&) = delete;
  StopSignalThread& operator=(const StopSignalThread&) = delete;

  void serving(ApiServer& api_server, httplib::Server& http) {
    std::lock_guard lock(mutex_);
    api_server_ = &api_server;
    http_ = &http;
  }
  // Joins the thread (waking it if no signal came); call before the server is destroyed.
  void finish() {
    if (!thread_.joinable()) return;
    released_ = true;
    pthread_kill(thread_.native_handle(), SIGTERM);
    thread_.join();
  }

 private:
  void wait_for_signal() {
    int signal_number = 0;
    sigwait(&signals_, &signal_number);
    if (released_) return;
    std::lock_guard lock(mutex_);
    if (!http_) {
      std::fprintf(stderr, "pdvm serve: interrupted while loading\n");
      std::_Exit(kInterruptedExitCode);
    }
    api_server_->cancel_all();
    // stop() does nothing before listening starts
    while (!http_->is_running() && !released_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    http_->stop();
  }

  sigset_t signals_;
  std::thread thread_;
  std::mutex mutex_;
  ApiServer* api_server_ = nullptr;
  httplib::Server* http_ = nullptr;
  std::atomic<bool> released_{false};
};

int serve(const ServeOptions& opt) {
  SessionOptions session_options;
  session_options.model_path = resolve_model_path(opt.model.model);
  session_options.backend = opt.model.backend.empty() ? default_backend_name() : opt.model.backend;
  session_options.n_ctx = opt.model.n_ctx;
  apply_backend_flags(opt.model, session_options);
  opt.sampling.params.validate();

  StopSignalThread stop_signals;
  const auto load_start = std::chrono::steady_clock::now();
  ApiServer api_server(opt, session_options);
  print_load_time(seconds_since(load_start));

  httplib::Server http;
  http.set_payload_max_length(static_cast<size_t>(opt.max_body_bytes));
  add_routes(http, api_server, opt.max_body_bytes);
  const int port = opt.port == 0 ? http.bind_to_any_port(opt.host) : (http.bind_to_port(opt.host, opt.port) ? opt.port : -1);
  if (port < 0) {
    throw_error(ErrorKind::kIo, fmt::format("cannot listen on {}:{} (address in use or not local?)", opt.host, opt.port));
  }
  stop_signals.serving(api_server, http);
  std::fprintf(stderr, "pdvm serve: listening on http://%s:%d (Ctrl-C stops)\n", opt.host.c_str(), port);
  std::fflush(stderr);
  const bool listened = http.listen_after_bind();
  stop_signals.finish();
  std::fprintf(stderr, "pdvm serve: stopped\n");
  return listened ? 0 : 1;
}

PDVM_REGISTER_COMMAND("serve", "OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)", [](CLI::App& app) {
  auto opt = std::make_shared<ServeOptions>();
  add_model_flags(app, opt->model);
  app.add_option("--host", opt->host, "address to listen on")->capture_default_str();
  app.add_option("--port", opt->port, "TCP port; 0 picks a free one")->capture_default_str()->check(integer_in(0, 65535));
  app.add_option("--chat-template", opt->chat_template,
                 "chat format instead of the model's: chatml, llama2, llama3, mistral, zephyr");
  app.add_option("--max-body", opt->max_body_bytes, "largest request body in bytes")
      ->capture_default_str()
      ->check(integer_in(1, int64_t{1} << 30));
  add_sampling_flags(app, opt->sampling);
  return [opt] { return serve(*opt); };
});

}  // namespace
}  // namespace pdvm::cli
