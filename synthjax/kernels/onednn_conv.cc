// oneDNN 2-D convolutions as XLA FFI custom calls for the CPU backend.
//
// Three handlers, float32, NHWC activations and HWIO kernels (XLA's layouts,
// read in place through strided oneDNN memory descriptors, no copies):
//   synthjax_conv_fwd          y  = conv(x, w)
//   synthjax_conv_bwd_data     dx = conv's input gradient for output cotangent dy
//   synthjax_conv_bwd_weights  dw = conv's kernel gradient for input x and cotangent dy
// Stride and padding come as attributes; every shape comes from the buffers,
// so one handler serves every layer. Leading dimensions before N/H (all three
// buffers alike) are members of a `jax.vmap` (a stack of runs): each member
// is one convolution with its own kernel, run in place (members side by side
// on the cores, see Run), without the slicing copies of a loop around the
// call. Why oneDNN: on the DCGAN layers XLA:CPU's own convolutions were
// slower than oneDNN's, the library PyTorch's CPU convolutions use
// (docs/performance.md).
//
// Built by `make native` against the pip packages onednn-cpu-gomp (the
// library, GNU OpenMP threading) and onednn-devel-cpu-gomp (the headers of
// the same release). Every oneDNN call's status is checked; every object is
// owned by an RAII handle, so each path frees what it created.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

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


// Owning handles: each oneDNN object is destroyed when its handle goes out of scope.
template <typename T, dnnl_status_t (*Destroy)(T)>
struct Handle {
  T get = nullptr;
  Handle() = default;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() {
    if (get) Destroy(get);
  }
};
using MemoryDesc = Handle<dnnl_memory_desc_t, dnnl_memory_desc_destroy>;
using Memory = Handle<dnnl_memory_t, dnnl_memory_destroy>;
using PrimitiveDesc = Handle<dnnl_primitive_desc_t, dnnl_primitive_desc_destroy>;
using Primitive = Handle<dnnl_primitive_t, dnnl_primitive_destroy>;
using Attr = Handle<dnnl_primitive_attr_t, dnnl_primitive_attr_destroy>;

// The process's CPU engine, created once; null (with the status) if oneDNN could not create one.
dnnl_engine_t Engine(dnnl_status_t* status) {
  static dnnl_status_t created = dnnl_success;
  static dnnl_engine_t engine = [] {
    // Plans (below) are this file's cache; oneDNN's own would only hold the same primitives twice.
    dnnl_set_primitive_cache_capacity(0);
    dnnl_engine_t e = nullptr;
    created = dnnl_engine_create(&e, dnnl_cpu, 0);
    return created == dnnl_success ? e : nullptr;
  }();
  *status = created;
  return engine;
}

// One stream per calling thread, created on first use.
dnnl_stream_t Stream(dnnl_engine_t engine, dnnl_status_t* status) {
  thread_local dnnl_status_t created = dnnl_success;
  thread_local dnnl_stream_t stream = [engine] {
    dnnl_stream_t s = nullptr;
    created = dnnl_stream_create(&s, engine, dnnl_stream_default_flags);
    return created == dnnl_success ? s : nullptr;
  }();
  *status = created;
  return stream;
}

// Plain memory descriptors for XLA's row-major NHWC / HWIO buffers, in
// oneDNN's logical dimension order (N, C, H, W) / (O, I, KH, KW).
dnnl_status_t Nhwc(int64_t n, int64_t c, int64_t h, int64_t w, MemoryDesc* md) {
  dnnl_dims_t dims = {n, c, h, w};
  dnnl_dims_t strides = {h * w * c, 1, w * c, c};
  return dnnl_memory_desc_create_with_strides(&md->get, 4, dims, dnnl_f32, strides);
}

dnnl_status_t Hwio(const Geometry& g, MemoryDesc* md) {
  dnnl_dims_t dims = {g.co, g.ci, g.kh, g.kw};
  dnnl_dims_t strides = {1, g.co, g.kw * g.ci * g.co, g.ci * g.co};
  return dnnl_memory_desc_create_with_strides(&md->get, 4, dims, dnnl_f32, strides);
}

dnnl_status_t AnyWeights(const Geometry& g, MemoryDesc* md) {
  dnnl_dims_t dims = {g.co, g.ci, g.kh, g.kw};
  return dnnl_memory_desc_create_with_tag(&md->get, 4, dims, dnnl_f32, dnnl_format_tag_any);
}

// A compiled primitive plus what it needs around it: the reorder between the
// HWIO buffer and the kernel layout oneDNN chose (empty when they agree).
struct Plan {
  PrimitiveDesc pd;
  Primitive conv;
  Primitive weights_reorder;
  const_dnnl_memory_desc_t conv_weights_md = nullptr;  // owned by `pd`
  const_dnnl_memory_desc_t scratchpad_md = nullptr;    // owned by `pd`; each execution brings its own
};

#define DNNL_CHECK(call)                   \
  do {                                     \
    dnnl_status_t status_ = (call);        \
    if (status_ != dnnl_success) return status_; \
  } while (0)

dnnl_status_t MakePlan(Kind kind, const Geometry& g, dnnl_engine_t engine, Plan* plan) {
  MemoryDesc src, dst, user_w, any_w;
  DNNL_CHECK(Nhwc(g.n, g.ci, g.h, g.w, &src));
  DNNL_CHECK(Nhwc(g.n, g.co, g.oh, g.ow, &dst));
  DNNL_CHECK(Hwio(g, &user_w));
  DNNL_CHECK(AnyWeights(g, &any_w));
  dnnl_dims_t strides = {g.sh, g.sw}, dilates = {0, 0}, pad_l = {g.pt, g.pl}, pad_r = {g.pb, g.pr};
  Attr attr;
  DNNL_CHECK(dnnl_primitive_attr_create(&attr.get));
  // Each execution brings its own scratchpad: the library's shared one is not safe for members run at once.
  DNNL_CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr.get, dnnl_scratchpad_mode_user));
  PrimitiveDesc fwd;
  DNNL_CHECK(dnnl_convolution_forward_primitive_desc_create(
      &fwd.get, engine, dnnl_forward_training, dnnl_convolution_direct, src.get, any_w.get, nullptr, dst.get,
      strides, dilates, pad_l, pad_r, attr.get));
  if (kind == Kind::kForward) {
    std::swap(plan->pd.get, fwd.get);
  } else if (kind == Kind::kBackwardData) {
    DNNL_CHECK(dnnl_convolution_backward_data_primitive_desc_create(
        &plan->pd.get, engine, dnnl_convolution_direct, src.get, any_w.get, dst.get, strides, dilates, pad_l, pad_r,
        fwd.get, attr.get));
  } else {
    DNNL_CHECK(dnnl_convolution_backward_weights_primitive_desc_create(
        &plan->pd.get, engine, dnnl_convolution_direct, src.get, any_w.get, nullptr, dst.get, strides, dilates, pad_l,
        pad_r, fwd.get, attr.get));
  }
  DNNL_CHECK(dnnl_primitive_create(&plan->conv.get, plan->pd.get));
  dnnl_query_t which = kind == Kind::kBackwardWeights ? dnnl_query_diff_weights_md : dnnl_query_weights_md;
  plan->conv_weights_md = dnnl_primitive_desc_query_md(plan->pd.get, which, 0);
  if (plan->conv_weights_md == nullptr) return dnnl_runtime_error;
  plan->scratchpad_md = dnnl_primitive_desc_query_md(plan->pd.get, dnnl_query_scratchpad_md, 0);
  if (!dnnl_memory_desc_equal(plan->conv_weights_md, user_w.get)) {
    // Forward passes read the kernel (HWIO -> oneDNN's layout); the kernel
    // gradient is written in oneDNN's layout and converted back.
    bool to_user = kind == Kind::kBackwardWeights;
    PrimitiveDesc reorder;
    DNNL_CHECK(dnnl_reorder_primitive_desc_create(&reorder.get, to_user ? plan->conv_weights_md : user_w.get, engine,
                                                  to_user ? user_w.get : plan->conv_weights_md, engine, nullptr));
    DNNL_CHECK(dnnl_primitive_create(&plan->weights_reorder.get, reorder.get));
  }
  return dnnl_success;
}

// Plans are cached: building one (oneDNN's JIT) costs far more than running it, and a model has a
// few per layer shape. The cache is bounded (a long notebook session can meet many shapes): when
// full it is emptied, and plans still in use stay alive through their shared_ptr.
constexpr size_t kMaxPlans = 512;

dnnl_status_t GetPlan(Kind kind, const Geometry& g, dnnl_engine_t engine, std::shared_ptr<const Plan>* plan) {
  static std::mutex mu;
  static std::map<std::pair<int, std::array<int64_t, 15>>, std::shared_ptr<const Plan>> plans;
  std::lock_guard<std::mutex> lock(mu);
  // A plan is built for the OpenMP team it will run with (oneDNN splits its work by the team size).
  auto key = std::make_pair(static_cast<int>(kind) * 4096 + omp_get_max_threads(), g.Tie());
  auto it = plans.find(key);
  if (it == plans.end()) {
    auto fresh = std::make_shared<Plan>();
    DNNL_CHECK(MakePlan(kind, g, engine, fresh.get()));
    if (plans.size() >= kMaxPlans) plans.clear();
    it = plans.emplace(key, std::move(fresh)).first;
  }
  *plan = it->second;
  return dnnl_success;
}

dnnl_status_t Execute(Kind kind, const Plan& plan, dnnl_engine_t engine, dnnl_stream_t stream, const Geometry& g,
                      void* src, void* weights, void* dst) {
  MemoryDesc src_md, dst_md, w_md;
  DNNL_CHECK(Nhwc(g.n, g.ci, g.h, g.w, &src_md));
  DNNL_CHECK(Nhwc(g.n, g.co, g.oh, g.ow, &dst_md));
  DNNL_CHECK(Hwio(g, &w_md));
  Memory src_mem, dst_mem, user_w, blocked_w;
  DNNL_CHECK(dnnl_memory_create(&src_mem.get, src_md.get, engine, src));
  DNNL_CHECK(dnnl_memory_create(&dst_mem.get, dst_md.get, engine, dst));
  DNNL_CHECK(dnnl_memory_create(&user_w.get, w_md.get, engine, weights));
  dnnl_memory_t conv_w = user_w.get;
  if (plan.weights_reorder.get) {
    DNNL_CHECK(dnnl_memory_create(&blocked_w.get, plan.conv_weights_md, engine, DNNL_MEMORY_ALLOCATE));
    conv_w = blocked_w.get;
  }
  if (plan.weights_reorder.get && kind != Kind::kBackwardWeights) {
    dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, user_w.get}, {DNNL_ARG_TO, conv_w}};
    DNNL_CHECK(dnnl_primitive_execute(plan.weights_reorder.get, stream, 2, args));
  }
  int src_arg = kind == Kind::kBackwardData ? DNNL_ARG_DIFF_SRC : DNNL_ARG_SRC;
  int w_arg = kind == Kind::kBackwardWeights ? DNNL_ARG_DIFF_WEIGHTS : DNNL_ARG_WEIGHTS;
  int dst_arg = kind == Kind::kForward ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST;
  Memory scratch;
  int nargs = 3;
  dnnl_exec_arg_t args[] = {{src_arg, src_mem.get}, {w_arg, conv_w}, {dst_arg, dst_mem.get}, {DNNL_ARG_SCRATCHPAD, nullptr}};
  if (plan.scratchpad_md && dnnl_memory_desc_get_size(plan.scratchpad_md) > 0) {
    DNNL_CHECK(dnnl_memory_create(&scratch.get, plan.scratchpad_md, engine, DNNL_MEMORY_ALLOCATE));
    args[nargs++].memory = scratch.get;
  }
  DNNL_CHECK(dnnl_primitive_execute(plan.conv.get, stream, nargs, args));
  if (plan.weights_reorder.get && kind == Kind::kBackwardWeights) {
    dnnl_exec_arg_t back[] = {{DNNL_ARG_FROM, conv_w}, {DNNL_ARG_TO, user_w.get}};
    DNNL_CHECK(dnnl_primitive_execute(plan.weights_reorder.get, stream, 2, back));
  }
  return dnnl_stream_wait(stream);
}

// Runs `members` convolutions: `src`, `weights`, `dst` are the NHWC / HWIO /
// NHWC buffers in the forward convolution's roles, whichever of them is the
// output, each holding the members one after another.
ffi::Error Run(Kind kind, const Geometry& g, int64_t members, float* src, float* weights, float* dst) {
  dnnl_status_t s = dnnl_success;
  dnnl_engine_t engine = Engine(&s);
  if (s != dnnl_success) return ffi::Error::Internal(Status("engine creation", s));
  std::shared_ptr<const Plan> plan;
  s = GetPlan(kind, g, engine, &plan);
  if (s != dnnl_success) return ffi::Error::Internal(Status("primitive creation", s));
  dnnl_stream_t stream = Stream(engine, &s);
  if (s != dnnl_success) return ffi::Error::Internal(Status("stream creation", s));
  // Why one convolution at a time per process: each already spreads over every core (OpenMP), and
  // two at once, from two XLA threads (several CPU devices, or independent ops of one program), can
  // deadlock: oneDNN's backward-weights kernels meet in barriers sized for a full OpenMP team, and
  // concurrent teams do not get one each (seen with 4 CPU devices).
  static std::mutex execute_mu;
  std::lock_guard<std::mutex> lock(execute_mu);
  const int64_t src_size = g.n * g.h * g.w * g.ci, w_size = g.kh * g.kw * g.ci * g.co, dst_size = g.n * g.oh * g.ow * g.co;
  const int teams = static_cast<int>(std::min<int64_t>(members, omp_get_max_threads()));
  if (teams <= 1) {
    for (int64_t m = 0; m < members; ++m) {
      s = Execute(kind, *plan, engine, stream, g, src + m * src_size, weights + m * w_size, dst + m * dst_size);
      if (s != dnnl_success) return ffi::Error::Internal(Status("convolution", s));
    }
    return ffi::Error::Success();
  }
  // Several members: side by side, one thread and a one-thread plan each, instead of one after another
  // on every thread: a batch-64 DCGAN layer does not keep two threads busy, so the stack gains about 5%
  // on two cores (docs/performance.md, "Stacks of members"). Each member's result depends only on its
  // own one-thread plan, so a stack is deterministic; its kernel gradients may differ from a lone call's
  // (two threads) by rounding, the order of the sums.
  dnnl_status_t failed = dnnl_success;
#pragma omp parallel num_threads(teams)
  {
    omp_set_num_threads(1);
    dnnl_status_t st = dnnl_success;
    dnnl_stream_t own = Stream(engine, &st);
    std::shared_ptr<const Plan> single;
    if (st == dnnl_success) st = GetPlan(kind, g, engine, &single);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < members; ++m) {
      if (st == dnnl_success) st = Execute(kind, *single, engine, own, g, src + m * src_size, weights + m * w_size, dst + m * dst_size);
    }
    if (st != dnnl_success) {
#pragma omp critical
      failed = st;
    }
  }
  if (failed != dnnl_success) return ffi::Error::Internal(Status("convolution", failed));
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;

// The geometry of one convolution and the number of members (the product of the leading dimensions).
ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
                        int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t pb, int64_t pr, Geometry* g,
                        int64_t* members) {
  if (x.size() < 4 || w.size() != x.size() || y.size() != x.size()) {
    return ffi::Error::InvalidArgument("synthjax oneDNN conv: expected NHWC / HWIO / NHWC buffers of equal rank >= 4");
  }
  const size_t lead = x.size() - 4;
  *members = 1;
  for (size_t i = 0; i < lead; ++i) {
    if (w[i] != x[i] || y[i] != x[i]) {
      return ffi::Error::InvalidArgument("synthjax oneDNN conv: the member (leading) dimensions of the buffers disagree");
    }
    *members *= x[i];
  }
  const int64_t* xd = x.begin() + lead;  // one member's NHWC / HWIO / NHWC dimensions
  const int64_t* wd = w.begin() + lead;
  const int64_t* yd = y.begin() + lead;
  if (wd[2] != xd[3] || wd[3] != yd[3] || xd[0] != yd[0]) {
    return ffi::Error::InvalidArgument("synthjax oneDNN conv: channel or batch sizes of input, kernel and output disagree");
  }
  *g = Geometry{xd[0], xd[3], xd[1], xd[2], wd[3], wd[0], wd[1], yd[1], yd[2], sh, sw, pt, pl, pb, pr};
  return ffi::Error::Success();
}

#define GEOMETRY_ATTRS                                                                      \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")            \
      .Attr<int64_t>("pad_left").Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_right")

ffi::Error ConvForward(F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                       int64_t pb, int64_t pr) {
  Geometry g;
  int64_t members;
  if (auto e = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pl, pb, pr, &g, &members); e.failure()) return e;
  return Run(Kind::kForward, g, members, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error ConvBackwardData(F32 dy, F32 w, ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                            int64_t pl, int64_t pb, int64_t pr) {
  Geometry g;
  int64_t members;
  if (auto e = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pl, pb, pr, &g, &members); e.failure()) return e;
  return Run(Kind::kBackwardData, g, members, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error ConvBackwardWeights(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt,
                               int64_t pl, int64_t pb, int64_t pr) {
  Geometry g;
  int64_t members;
  if (auto e = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pl, pb, pr, &g, &members); e.failure()) return e;
  return Run(Kind::kBackwardWeights, g, members, x.typed_data(), dw->typed_data(), dy.typed_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(synthjax_conv_fwd, ConvForward,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() GEOMETRY_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(synthjax_conv_bwd_data, ConvBackwardData,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() GEOMETRY_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(synthjax_conv_bwd_weights, ConvBackwardWeights,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() GEOMETRY_ATTRS);
