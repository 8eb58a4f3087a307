// `pdvm convert`: re-quantizes a GGUF model to another weight type with the reference
// (round-to-nearest) quantizers, or encodes its matrices as UPG (--type upg4|upg3).
#include <memory>
#include <string>

#include "cli_common.h"
#include "command.h"
#include "format/gguf_convert.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "progress_bar.h"
#include "upg/upg_convert.h"
#include "util/parallel_rows.h"

namespace pdvm::cli {
namespace {

struct Options {
  std::string input;
  std::string output;
  std::string type;
  int threads = default_thread_count();
  double outliers = -1.0;
  std::string calibration = "default";
};

int run(const Options& opt) {
  const TensorType type = tensor_type_flag("--type", opt.type);
  if (is_upg_type(type)) {
    const GgufFile in = GgufFile::open(opt.input);
    UpgConvertOptions upg;
    upg.bits = type == TensorType::kUpg3 ? 3 : 4;
    upg.outlier_fraction = opt.outliers;
    upg.calibration = opt.calibration;
    upg.threads = opt.threads;
    ProgressBar bar("convert to " + opt.type);
    convert_gguf_upg(in, opt.output, upg, [&bar](uint64_t done, uint64_t total) { bar.update(done, total); });
    return 0;
  }
  if (opt.outliers >= 0.0) throw Error(ErrorKind::kInvalidArgument, "--outliers applies to --type upg4 or upg3 only");
  llama_file_type(type);  // rejects types that are no model file type before any work
  const GgufFile in = GgufFile::open(opt.input);
  ProgressBar bar("convert to " + opt.type);
  convert_gguf(in, opt.output, type, opt.threads, [&bar](uint64_t done, uint64_t total) { bar.update(done, total); });
  return 0;
}

}  // namespace

PDVM_REGISTER_COMMAND("convert", "re-quantize a GGUF model to another weight type", [](CLI::App& app) {
  auto opt = std::make_shared<Options>();
  app.add_option("input", opt->input, "input .gguf")->required();
  app.add_option("output", opt->output, "output .gguf (written through a temporary file)")->required();
  app.add_option("--type", opt->type, "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, upg4 or upg3")
      ->required();
  app.add_option("--outliers", opt->outliers,
                 "UPG: fraction of each row kept as f16 outliers (default 0 at upg4, 0.0035 at upg3)")
      ->check(CLI::Range(0.0, 0.49));
  app.add_option("--calibration", opt->calibration,
                 "UPG importance: default (built-in text), none (h = 1) or a text file")
      ->capture_default_str();
  app.add_option("--threads", opt->threads, "worker threads")->capture_default_str()->check(integer_in(1, kMaxThreads));
  return [opt] { return run(*opt); };
});

}  // namespace pdvm::cli
