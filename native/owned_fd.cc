// OwnedFd: the one owner of a file descriptor. Every other native function
// takes an OwnedFd and asks it for the fd, so a closed fd number (which the
// kernel may already have handed to someone else) is never used again.
// Optionally watches the fd with uv_poll on the env's own loop.
#include <uv.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>

#include "addon.h"

namespace vhost {

// Tags every OwnedFd so Unwrap can trust what it gets: InstanceOf follows
// Symbol.hasInstance and prototype chains, which JS can forge.
constexpr napi_type_tag kOwnedFdTag = {0x6c696e7578766873ULL, 0x6f776e6564666421ULL};

class OwnedFd : public Napi::ObjectWrap<OwnedFd> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "OwnedFd",
                       {InstanceAccessor<&OwnedFd::GetFd>("fd"),
                        InstanceAccessor<&OwnedFd::GetPath>("path"),
                        InstanceAccessor<&OwnedFd::GetClosed>("closed"),
                        InstanceMethod<&OwnedFd::Close>("close"),
                        InstanceMethod<&OwnedFd::Watch>("watch"),
                        InstanceMethod<&OwnedFd::Unwatch>("unwatch"),
                        InstanceMethod<&OwnedFd::RefPoll>("ref"),
                        InstanceMethod<&OwnedFd::UnrefPoll>("unref")});
  }

  explicit OwnedFd(const Napi::CallbackInfo& info) : Napi::ObjectWrap<OwnedFd>(info) {
    if (!Data(info.Env()).wrappingFd)
      throw CodeError(info.Env(), "ERR_VHOST_ILLEGAL_CONSTRUCTOR", "OwnedFd is created by the addon only");
    fd_ = info[0].As<Napi::Number>().Int32Value();
    path_ = info[1].As<Napi::String>().Utf8Value();
    info.This().As<Napi::Object>().TypeTag(&kOwnedFdTag);
    live_ = Data(info.Env()).liveFds;
    live_->insert(fd_);
  }

  // Safety net for objects nobody closed: stop polling and close the fd.
  ~OwnedFd() override { CloseNow(); }

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  FdKind kind() const { return kind_; }
  void set_kind(FdKind kind) { kind_ = kind; }

 private:
  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value GetPath(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), path_); }
  Napi::Value GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), fd_ < 0); }

  void Close(const Napi::CallbackInfo&) { CloseNow(); }

  // Order matters: stop the poll and hand its handle to uv_close before the
  // fd is closed, so libuv never watches a recycled fd number.
  void CloseNow() {
    StopPoll();
    if (fd_ >= 0) {
      live_->erase(fd_);
      ::close(fd_);  // Linux releases the fd even when close reports EINTR
      fd_ = -1;
    }
  }

  void StopPoll() {
    if (poll_ == nullptr) return;
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_),
             [](uv_handle_t* handle) { delete reinterpret_cast<uv_poll_t*>(handle); });
    poll_ = nullptr;
    callback_.Reset();
    if (pinned_) {
      pinned_ = false;
      Unref();  // the JS object may be collected again
    }
  }

  // watch(events, cb): events is a mask of UV_READABLE (1) and UV_WRITABLE (2);
  // cb(status, events) runs on the env's loop. Calling again changes both.
  void Watch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) throw ClosedError(env, "watch", path_);
    if (!info[0].IsNumber()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "watch events must be a number");
    int events = info[0].As<Napi::Number>().Int32Value();
    // libuv asserts (aborts the process) on any other bit; 0 pauses the watcher.
    if ((events & ~(UV_READABLE | UV_WRITABLE | UV_DISCONNECT | UV_PRIORITIZED)) != 0)
      throw CodeError(env, "ERR_VHOST_INVALID_ARG", "watch events must be a mask of READABLE (1), WRITABLE (2), DISCONNECT (4), PRIORITIZED (8)");
    if (!info[1].IsFunction()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "watch callback must be a function");
    if (poll_ == nullptr) {
      uv_loop_t* loop = nullptr;
      if (napi_get_uv_event_loop(env, &loop) != napi_ok) throw Napi::Error::New(env, "no event loop");
      auto* poll = new uv_poll_t();
      int rc = uv_poll_init(loop, poll, fd_);
      if (rc != 0) {
        delete poll;
        throw ErrnoError(env, -rc, "uv_poll_init", path_);
      }
      poll->data = this;
      poll_ = poll;
      if (!refed_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    }
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    int rc = uv_poll_start(poll_, events, OnPoll);
    if (rc != 0) {
      StopPoll();
      throw ErrnoError(env, -rc, "uv_poll_start", path_);
    }
    if (!pinned_) {
      pinned_ = true;
      Ref();  // keep the JS object alive while the loop may call back into it
    }
  }

  void Unwatch(const Napi::CallbackInfo&) { StopPoll(); }

  void RefPoll(const Napi::CallbackInfo&) {
    refed_ = true;
    if (poll_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  }

  void UnrefPoll(const Napi::CallbackInfo&) {
    refed_ = false;
    if (poll_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    auto* self = static_cast<OwnedFd*>(handle->data);
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    try {
      self->callback_.MakeCallback(self->Value(), {Napi::Number::New(env, status),
                                                   Napi::Number::New(env, events)});
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());  // like an exception in any Node callback
    }
  }

  int fd_ = -1;
  std::string path_;
  FdKind kind_ = FdKind::kOther;
  std::shared_ptr<std::unordered_set<int>> live_;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference callback_;
  bool refed_ = true;
  bool pinned_ = false;
};

Napi::Object WrapFd(Napi::Env env, int fd, const std::string& path, FdKind kind) {
  AddonData& data = Data(env);
  data.wrappingFd = true;
  Napi::Object obj;
  try {
    obj = data.ownedFdCtor.New({Napi::Number::New(env, fd), Napi::String::New(env, path)});
    data.wrappingFd = false;
  } catch (...) {
    data.wrappingFd = false;
    ::close(fd);
    throw;
  }
  // Outside the try: obj owns fd now, so a failure here must not close it.
  OwnedFd::Unwrap(obj)->set_kind(kind);
  return obj;
}

static OwnedFd* Unwrap(const Napi::Value& value) {
  if (!value.IsObject()) return nullptr;
  Napi::Object obj = value.As<Napi::Object>();
  if (!obj.CheckTypeTag(&kOwnedFdTag)) return nullptr;
  return OwnedFd::Unwrap(obj);
}

bool FdOwned(Napi::Env env, int fd) { return Data(env).liveFds->count(fd) != 0; }

int FdOf(const Napi::Value& handle, const std::string& syscall) {
  OwnedFd* owned = Unwrap(handle);
  if (owned == nullptr)
    throw CodeError(handle.Env(), "ERR_VHOST_INVALID_ARG", syscall + ": expected an OwnedFd");
  if (owned->fd() < 0) throw ClosedError(handle.Env(), syscall, owned->path());
  return owned->fd();
}

std::string PathOf(const Napi::Value& handle) {
  OwnedFd* owned = Unwrap(handle);
  return owned == nullptr ? std::string() : owned->path();
}

FdKind KindOf(const Napi::Value& handle) {
  OwnedFd* owned = Unwrap(handle);
  return owned == nullptr ? FdKind::kOther : owned->kind();
}

void SetKindOf(const Napi::Value& handle, FdKind kind) {
  OwnedFd* owned = Unwrap(handle);
  if (owned != nullptr) owned->set_kind(kind);
}

int IoctlOn(const Napi::Value& handle, unsigned long request, void* arg, const char* name) {
  std::string syscall = std::string("ioctl(") + name + ")";
  int fd = FdOf(handle, syscall);
  int rc;
  do {
    rc = ::ioctl(fd, request, arg);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) throw ErrnoError(handle.Env(), errno, syscall, PathOf(handle));
  return rc;
}

int FdArg(const Napi::Value& value, const std::string& syscall) {
  if (value.IsNull() || value.IsUndefined()) return -1;
  if (value.IsNumber()) {
    double d = value.As<Napi::Number>().DoubleValue();
    if (!IsIntIn(d, -1, INT32_MAX))
      throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", syscall + ": fd must be an integer >= -1");
    return static_cast<int>(d);
  }
  return FdOf(value, syscall);
}

// openPath(path, extraFlags): open(path, O_RDWR | O_CLOEXEC | extraFlags).
static Napi::Value OpenPath(const Napi::CallbackInfo& info) {
  std::string path = StringArg(info[0], "path");
  int extra = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 0;
  // Only flags that make sense for a device; never O_CREAT/O_TMPFILE (they need a mode).
  if ((extra & ~(O_NONBLOCK | O_NOCTTY)) != 0)
    throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "openPath flags may only add O_NONBLOCK or O_NOCTTY");
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | extra);
  if (fd < 0) throw ErrnoError(info.Env(), errno, "open", path);
  return WrapFd(info.Env(), fd, path);
}

void InitOwnedFd(Napi::Env env, Napi::Object exports) {
  exports.Set("openPath", Napi::Function::New(env, OpenPath, "openPath"));
  Napi::Function ctor = OwnedFd::Define(env);
  Data(env).ownedFdCtor = Napi::Persistent(ctor);
  exports.Set("OwnedFd", ctor);
}

}  // namespace vhost
