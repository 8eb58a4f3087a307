#include "upg/upg_convert.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "pdvm/error.h"
#include "pdvm/upg.h"
#include "upg/upg_calibration.h"
#include "util/parallel_rows.h"

namespace pdvm {
namespace {

constexpr uint64_t kUpgAlignment = 256;
constexpr uint32_t kFileTypeUnspecified = 1024;  // llama.cpp's "guessed" file type
constexpr const char* kEncoderName = "pdvm weighted-lloyd v1 (iq4nl/normal start, 4 rounds)";

bool is_embedding_or_output(const std::string& name) {
  return name == "token_embd.weight" || name == "output.weight";
}

bool becomes_upg(const GgufTensor& t) {
  return t.shape.size() == 2 && t.shape[0] % kUpgGroup == 0 && t.name.ends_with(".weight") &&
         type_info(t.type).dequantizable;
}

// Encoding plan of one matrix.
struct MatrixPlan {
  UpgEncodeOptions encode;
  int64_t cap = 0;
};

MatrixPlan plan_for(const GgufTensor& t, const UpgConvertOptions& options) {
  MatrixPlan plan;
  plan.encode.bits = is_embedding_or_output(t.name) ? 4 : options.bits;
  plan.encode.block = upg_block_for(t.shape[0]);
  plan.encode.outlier_fraction =
      options.outlier_fraction >= 0 ? options.outlier_fraction : (plan.encode.bits == 3 ? 0.0035 : 0.0);
  plan.cap = static_cast<int64_t>(std::ceil(plan.encode.outlier_fraction * static_cast<double>(t.shape[0])));
  return plan;
}

std::vector<float> dequantize_all(const GgufTensor& t, int threads) {
  const int64_t k = t.shape.empty() ? 1 : t.shape[0];
  const int64_t n = t.n_elems() / k;
  const int64_t row_bytes = type_bytes(t.type, k);
  std::vector<float> values(static_cast<size_t>(t.n_elems()));
  parallel_rows(n, threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) dequantize_row(t.type, t.data + r * row_bytes, values.data() + r * k, k);
  });
  return values;
}

template <typename T>
void copy_out(const std::vector<T>& from, std::span<uint8_t> to) {
  PDVM_CHECK(from.size() * sizeof(T) == to.size());
  std::memcpy(to.data(), from.data(), to.size());
}

}  // namespace

int64_t upg_block_for(int64_t k) { return k % 64 == 0 ? 64 : 32; }

void convert_gguf_upg(const GgufFile& in, const std::filesystem::path& out, const UpgConvertOptions& options,
                      const std::function<void(uint64_t, uint64_t)>& progress) {
  if (options.bits != 4 && options.bits != 3) {
    throw_error(ErrorKind::kInvalidArgument, "UPG bits must be 4 or 3");
  }
  auto importance = std::make_shared<Importance>();
  std::string calibration = "none (h = 1)";
  if (options.calibration != "none") {
    const bool builtin = options.calibration == "default";
    const std::string text = builtin ? std::string(builtin_calibration_text()) : read_calibration_file(options.calibration);
    *importance = measure_importance(in, text, options.calibration_tokens, options.threads);
    calibration = (builtin ? std::string("built-in text") : "file " + options.calibration) + ", " +
                  std::to_string(importance->n_tokens) + " tokens, h = E[x^2]";
  }

  GgufWriter writer(kUpgAlignment);
  for (const GgufKeyValue& kv : in.metadata()) writer.set(kv.key, kv.value);
  writer.set("general.alignment", GgufValue(static_cast<uint32_t>(kUpgAlignment)));
  writer.set("general.file_type", GgufValue(kFileTypeUnspecified));
  writer.set("upg.version", GgufValue(kUpgVersion));
  writer.set("upg.bits", GgufValue(static_cast<uint32_t>(options.bits)));
  writer.set("upg.encoder", GgufValue(kEncoderName));
  writer.set("upg.calibration", GgufValue(calibration));
  int64_t outlier_cap = 0;
  for (const GgufTensor& t : in.tensors()) {
    if (becomes_upg(t)) outlier_cap = std::max(outlier_cap, plan_for(t, options).cap);
  }
  writer.set("upg.outlier_cap", GgufValue(static_cast<uint32_t>(outlier_cap)));

  for (const GgufTensor& t : in.tensors()) {
    if (!type_info(t.type).dequantizable) {
      throw_error(ErrorKind::kUnsupported, "tensor '" + t.name + "' has type " + std::string(type_name(t.type)) +
                                               ", which cannot be converted");
    }
    if (!becomes_upg(t)) {
      writer.add_tensor(t.name, TensorType::kF32, t.shape, [&t, &options](std::span<uint8_t> dst) {
        copy_out(dequantize_all(t, options.threads), dst);
      });
      continue;
    }
    const MatrixPlan plan = plan_for(t, options);
    const int64_t k = t.shape[0], n = t.shape[1], nnz = n * plan.cap;
    // The codes' filler encodes the matrix; the following components copy from it and the
    // last one frees it, so only one encoded matrix is held at a time.
    auto encoded = std::make_shared<std::unique_ptr<UpgEncoded>>();
    const auto take = [encoded](auto member, bool last) {
      return [encoded, member, last](std::span<uint8_t> dst) {
        copy_out((**encoded).*member, dst);
        if (last) encoded->reset();
      };
    };
    writer.add_tensor(upg_component_name(t.name, "codes"), TensorType::kI8, {k * plan.encode.bits / 8, n},
                      [encoded, &t, plan, importance, &options](std::span<uint8_t> dst) {
                        const auto h = importance->columns.find(t.name);
                        const std::vector<float> w = dequantize_all(t, options.threads);
                        *encoded = std::make_unique<UpgEncoded>(
                            upg_encode(w.data(), t.shape[0], t.shape[1],
                                       h != importance->columns.end() ? h->second.data() : nullptr, plan.encode,
                                       options.threads));
                        copy_out((**encoded).codes, dst);
                      });
    writer.add_tensor(upg_component_name(t.name, "bscale"), TensorType::kI8, {k / plan.encode.block, n},
                      take(&UpgEncoded::bscale, false));
    writer.add_tensor(upg_component_name(t.name, "lut"), TensorType::kI8, {int64_t{1} << plan.encode.bits, n},
                      take(&UpgEncoded::lut, false));
    writer.add_tensor(upg_component_name(t.name, "rscale"), TensorType::kF32, {n}, take(&UpgEncoded::rscale, nnz == 0));
    if (nnz == 0) continue;
    writer.add_tensor(upg_component_name(t.name, "sp_rowptr"), TensorType::kI32, {n + 1},
                      take(&UpgEncoded::sp_rowptr, false));
    if (k <= 65536) {
      writer.add_tensor(upg_component_name(t.name, "sp_idx"), TensorType::kI16, {nnz}, take(&UpgEncoded::sp_idx16, false));
    } else {
      writer.add_tensor(upg_component_name(t.name, "sp_idx"), TensorType::kI32, {nnz}, take(&UpgEncoded::sp_idx32, false));
    }
    writer.add_tensor(upg_component_name(t.name, "sp_val"), TensorType::kF16, {nnz}, take(&UpgEncoded::sp_val, true));
  }
  writer.write(out, progress);
}

}  // namespace pdvm
