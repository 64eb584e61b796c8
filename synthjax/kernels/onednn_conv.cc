// oneDNN 2-D convolutions as XLA FFI custom calls for the CPU backend.
//
// Three handlers, float32, NHWC activations and HWIO kernels (XLA's layouts,
// read in place through strided oneDNN memory descriptors, no copies):
//   synthjax_conv_fwd          y  = conv(x, w)
//   synthjax_conv_bwd_data     dx = conv's input gradient for output cotangent dy
//   synthjax_conv_bwd_weights  dw = conv's kernel gradient for input x and cotangent dy
// Stride and padding come as attributes; every shape comes from the buffers,
// so one handler serves every layer. Why: on the DCGAN layers XLA:CPU's own
// convolutions (or their best rewrites) were 1.16-1.35x slower than these
// (forward + backward, batch 128; benchmarks/RESULTS.md, sixth session).
//
// Built by `make native` against the pip packages onednn-cpu-gomp (the
// library, GNU OpenMP threading) and onednn-devel (headers). Only the stable
// oneDNN 3.x C API is used.
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "oneapi/dnnl/dnnl.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum class Kind : int { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// Everything that fixes a convolution primitive.
struct Geometry {
  int64_t n, ci, h, w;     // input (NHWC)
  int64_t co, kh, kw;      // kernel (HWIO: kh, kw, ci, co)
  int64_t oh, ow;          // output (NHWC)
  int64_t sh, sw;          // strides
  int64_t pt, pl, pb, pr;  // padding: top, left, bottom, right
  auto Tie() const { return std::array<int64_t, 15>{n, ci, h, w, co, kh, kw, oh, ow, sh, sw, pt, pl, pb, pr}; }
};

std::string Status(const char* what, dnnl_status_t status) {
  return std::string("oneDNN ") + what + " failed with status " + std::to_string(static_cast<int>(status));
}

#define DNNL_TRY(call)                                                          \
  do {                                                                          \
    dnnl_status_t status_ = (call);                                             \
    if (status_ != dnnl_success) return ffi::Error::Internal(Status(#call, status_)); \
  } while (0)

dnnl_engine_t Engine() {
  static dnnl_engine_t engine = [] {
    dnnl_engine_t e = nullptr;
    dnnl_engine_create(&e, dnnl_cpu, 0);
    return e;
  }();
  return engine;
}

dnnl_stream_t Stream() {
  thread_local dnnl_stream_t stream = [] {
    dnnl_stream_t s = nullptr;
    dnnl_stream_create(&s, Engine(), dnnl_stream_default_flags);
    return s;
  }();
  return stream;
}

// Plain memory descriptors for XLA's row-major NHWC / HWIO buffers, in
// oneDNN's logical dimension order (N, C, H, W) / (O, I, KH, KW).
dnnl_memory_desc_t Nhwc(int64_t n, int64_t c, int64_t h, int64_t w) {
  dnnl_dims_t dims = {n, c, h, w};
  dnnl_dims_t strides = {h * w * c, 1, w * c, c};
  dnnl_memory_desc_t md = nullptr;
  dnnl_memory_desc_create_with_strides(&md, 4, dims, dnnl_f32, strides);
  return md;
}

dnnl_memory_desc_t Hwio(const Geometry& g) {
  dnnl_dims_t dims = {g.co, g.ci, g.kh, g.kw};
  dnnl_dims_t strides = {1, g.co, g.kw * g.ci * g.co, g.ci * g.co};
  dnnl_memory_desc_t md = nullptr;
  dnnl_memory_desc_create_with_strides(&md, 4, dims, dnnl_f32, strides);
  return md;
}

dnnl_memory_desc_t AnyWeights(const Geometry& g) {
  dnnl_dims_t dims = {g.co, g.ci, g.kh, g.kw};
  dnnl_memory_desc_t md = nullptr;
  dnnl_memory_desc_create_with_tag(&md, 4, dims, dnnl_f32, dnnl_format_tag_any);
  return md;
}

// A compiled primitive plus what it needs around it: the reorder between the
// HWIO buffer and the kernel layout oneDNN chose (null when they agree).
struct Plan {
  dnnl_primitive_t conv = nullptr;
  dnnl_primitive_t weights_reorder = nullptr;
  const_dnnl_memory_desc_t conv_weights_md = nullptr;  // owned by the primitive desc below
  dnnl_primitive_desc_t pd = nullptr;
};

dnnl_status_t MakePlan(Kind kind, const Geometry& g, Plan* plan) {
  dnnl_memory_desc_t src = Nhwc(g.n, g.ci, g.h, g.w);
  dnnl_memory_desc_t dst = Nhwc(g.n, g.co, g.oh, g.ow);
  dnnl_memory_desc_t user_w = Hwio(g);
  dnnl_memory_desc_t any_w = AnyWeights(g);
  dnnl_dims_t strides = {g.sh, g.sw}, dilates = {0, 0}, pad_l = {g.pt, g.pl}, pad_r = {g.pb, g.pr};
  dnnl_primitive_desc_t fwd = nullptr;
  dnnl_status_t s = dnnl_convolution_forward_primitive_desc_create(
      &fwd, Engine(), dnnl_forward_training, dnnl_convolution_direct, src, any_w, nullptr, dst, strides, dilates,
      pad_l, pad_r, nullptr);
  if (s == dnnl_success && kind == Kind::kForward) {
    plan->pd = fwd;
  } else if (s == dnnl_success && kind == Kind::kBackwardData) {
    s = dnnl_convolution_backward_data_primitive_desc_create(&plan->pd, Engine(), dnnl_convolution_direct, src,
                                                             any_w, dst, strides, dilates, pad_l, pad_r, fwd,
                                                             nullptr);
    dnnl_primitive_desc_destroy(fwd);
  } else if (s == dnnl_success) {
    s = dnnl_convolution_backward_weights_primitive_desc_create(&plan->pd, Engine(), dnnl_convolution_direct, src,
                                                                any_w, nullptr, dst, strides, dilates, pad_l,
                                                                pad_r, fwd, nullptr);
    dnnl_primitive_desc_destroy(fwd);
  }
  if (s == dnnl_success) s = dnnl_primitive_create(&plan->conv, plan->pd);
  if (s == dnnl_success) {
    dnnl_query_t which = kind == Kind::kBackwardWeights ? dnnl_query_diff_weights_md : dnnl_query_weights_md;
    plan->conv_weights_md = dnnl_primitive_desc_query_md(plan->pd, which, 0);
    if (!dnnl_memory_desc_equal(plan->conv_weights_md, user_w)) {
      // Forward passes read the kernel (HWIO -> oneDNN's layout); the kernel
      // gradient is written in oneDNN's layout and converted back.
      bool to_user = kind == Kind::kBackwardWeights;
      dnnl_primitive_desc_t rpd = nullptr;
      s = dnnl_reorder_primitive_desc_create(&rpd, to_user ? plan->conv_weights_md : user_w, Engine(),
                                             to_user ? user_w : plan->conv_weights_md, Engine(), nullptr);
      if (s == dnnl_success) s = dnnl_primitive_create(&plan->weights_reorder, rpd);
      if (rpd) dnnl_primitive_desc_destroy(rpd);
    }
  }
  for (dnnl_memory_desc_t md : {src, dst, user_w, any_w}) dnnl_memory_desc_destroy(md);
  return s;
}

// Plans live for the process: a few per layer shape, and building one
// (oneDNN's JIT) costs far more than running it.
dnnl_status_t GetPlan(Kind kind, const Geometry& g, const Plan** plan) {
  static std::mutex mu;
  static std::map<std::pair<int, std::array<int64_t, 15>>, std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_pair(static_cast<int>(kind), g.Tie());
  auto it = plans.find(key);
  if (it == plans.end()) {
    auto fresh = std::make_unique<Plan>();
    dnnl_status_t s = MakePlan(kind, g, fresh.get());
    if (s != dnnl_success) return s;
    it = plans.emplace(key, std::move(fresh)).first;
  }
  *plan = it->second.get();
  return dnnl_success;
}

dnnl_memory_t Wrap(const_dnnl_memory_desc_t md, void* data) {
  dnnl_memory_t mem = nullptr;
  dnnl_memory_create(&mem, md, Engine(), data);
  return mem;
}

// Runs one convolution: `src`, `weights`, `dst` are the NHWC / HWIO / NHWC
// buffers in the forward convolution's roles, whichever of them is the output.
ffi::Error Run(Kind kind, const Geometry& g, void* src, void* weights, void* dst) {
  const Plan* plan = nullptr;
  DNNL_TRY(GetPlan(kind, g, &plan));
  dnnl_memory_desc_t src_md = Nhwc(g.n, g.ci, g.h, g.w), dst_md = Nhwc(g.n, g.co, g.oh, g.ow), w_md = Hwio(g);
  dnnl_memory_t src_mem = Wrap(src_md, src), dst_mem = Wrap(dst_md, dst), user_w = Wrap(w_md, weights);
  dnnl_memory_t conv_w = user_w;
  if (plan->weights_reorder) {
    dnnl_memory_create(&conv_w, plan->conv_weights_md, Engine(), DNNL_MEMORY_ALLOCATE);
  }
  // One convolution at a time per process. Each already spreads over every
  // core (OpenMP), and two at once, from two XLA threads (several CPU
  // devices, or independent ops of one program), can deadlock: oneDNN's
  // backward-weights kernels meet in barriers sized for a full team, and
  // concurrent OpenMP teams do not get one each (seen with 4 CPU devices).
  static std::mutex execute_mu;
  std::lock_guard<std::mutex> lock(execute_mu);
  dnnl_status_t s = dnnl_success;
  if (plan->weights_reorder && kind != Kind::kBackwardWeights) {
    dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, user_w}, {DNNL_ARG_TO, conv_w}};
    s = dnnl_primitive_execute(plan->weights_reorder, Stream(), 2, args);
  }
  if (s == dnnl_success) {
    int src_arg = kind == Kind::kBackwardData ? DNNL_ARG_DIFF_SRC : DNNL_ARG_SRC;
    int w_arg = kind == Kind::kBackwardWeights ? DNNL_ARG_DIFF_WEIGHTS : DNNL_ARG_WEIGHTS;
    int dst_arg = kind == Kind::kForward ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST;
    dnnl_exec_arg_t args[] = {{src_arg, src_mem}, {w_arg, conv_w}, {dst_arg, dst_mem}};
    s = dnnl_primitive_execute(plan->conv, Stream(), 3, args);
  }
  if (s == dnnl_success && plan->weights_reorder && kind == Kind::kBackwardWeights) {
    dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, conv_w}, {DNNL_ARG_TO, user_w}};
    s = dnnl_primitive_execute(plan->weights_reorder, Stream(), 2, args);
  }
  if (s == dnnl_success) s = dnnl_stream_wait(Stream());
  if (conv_w != user_w) dnnl_memory_destroy(conv_w);
  for (dnnl_memory_t m : {src_mem, dst_mem, user_w}) dnnl_memory_destroy(m);
  for (dnnl_memory_desc_t md : {src_md, dst_md, w_md}) dnnl_memory_desc_destroy(md);
  if (s != dnnl_success) return ffi::Error::Internal(Status("convolution", s));
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;

ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
                        int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t pb, int64_t pr, Geometry* g) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) {
    return ffi::Error::InvalidArgument("synthjax oneDNN conv: expected rank-4 NHWC / HWIO / NHWC buffers");
  }
  if (w[2] != x[3] || w[3] != y[3] || x[0] != y[0]) {
    return ffi::Error::InvalidArgument("synthjax oneDNN conv: channel or batch sizes of input, kernel and output disagree");
  }
  *g = Geometry{x[0], x[3], x[1], x[2], w[3], w[0], w[1], y[1], y[2], sh, sw, pt, pl, pb, pr};
  return ffi::Error::Success();
}

#define GEOMETRY_ATTRS                                                                      \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")            \
      .Attr<int64_t>("pad_left").Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_right")

ffi::Error ConvForward(F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                       int64_t pb, int64_t pr) {
  Geometry g;
  if (auto e = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pl, pb, pr, &g); e.failure()) return e;
  return Run(Kind::kForward, g, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error ConvBackwardData(F32 dy, F32 w, ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                            int64_t pl, int64_t pb, int64_t pr) {
  Geometry g;
  if (auto e = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pl, pb, pr, &g); e.failure()) return e;
  return Run(Kind::kBackwardData, g, dx->untyped_data(), w.untyped_data(), dy.untyped_data());
}

ffi::Error ConvBackwardWeights(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt,
                               int64_t pl, int64_t pb, int64_t pr) {
  Geometry g;
  if (auto e = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pl, pb, pr, &g); e.failure()) return e;
  return Run(Kind::kBackwardWeights, g, x.untyped_data(), dw->untyped_data(), dy.untyped_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(synthjax_conv_fwd, ConvForward,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() GEOMETRY_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(synthjax_conv_bwd_data, ConvBackwardData,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() GEOMETRY_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(synthjax_conv_bwd_weights, ConvBackwardWeights,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() GEOMETRY_ATTRS);
