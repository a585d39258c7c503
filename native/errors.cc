// Errors shaped like Node core's (src/api/exceptions.cc): code from libuv's
// errno name, lowercase description, the syscall and the path.
#include <uv.h>

#include <cctype>
#include <cmath>
#include <cstring>

#include "addon.h"

namespace vhost {

static Napi::Error MakeError(Napi::Env env, const std::string& message) {
  AddonData& data = Data(env);
  if (!data.errorCtor.IsEmpty()) {
    Napi::Object obj = data.errorCtor.New({Napi::String::New(env, message)});
    return Napi::Error(env, obj);
  }
  return Napi::Error::New(env, message);
}

// libuv names only the errnos it knows ("Unknown system error -77" for
// EBADFD, which a deleted tap gives); fall back to glibc's name for the rest.
static bool UvKnows(int err) { return std::strncmp(uv_err_name(-err), "Unknown", 7) != 0; }

static std::string ErrnoName(int err) {
  if (UvKnows(err)) return uv_err_name(-err);
  const char* name = strerrorname_np(err);
  return name != nullptr ? name : uv_err_name(-err);
}

static std::string ErrnoDescription(int err) {
  if (UvKnows(err)) return uv_strerror(-err);
  std::string text = std::strerror(err);
  if (!text.empty()) text[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[0])));
  return text;
}

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall,
                       const std::string& path) {
  std::string code = ErrnoName(err);
  std::string message = code + ": " + ErrnoDescription(err) + ", " + syscall;
  if (!path.empty()) message += " '" + path + "'";
  Napi::Error error = MakeError(env, message);
  Napi::Object obj = error.Value();
  obj.Set("code", code);
  obj.Set("errno", Napi::Number::New(env, -err));
  obj.Set("syscall", syscall);
  if (!path.empty()) obj.Set("path", path);
  return error;
}

Napi::Error ClosedError(Napi::Env env, const std::string& syscall, const std::string& path) {
  std::string message = "ERR_VHOST_CLOSED: " + syscall + " on closed fd";
  if (!path.empty()) message += " '" + path + "'";
  Napi::Error error = MakeError(env, message);
  Napi::Object obj = error.Value();
  obj.Set("code", "ERR_VHOST_CLOSED");
  obj.Set("syscall", syscall);
  if (!path.empty()) obj.Set("path", path);
  return error;
}

Napi::Error CodeError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error error = MakeError(env, message);
  error.Value().Set("code", code);
  return error;
}

uint64_t U64Arg(const Napi::Value& value, const char* name) {
  Napi::Env env = value.Env();
  if (value.IsBigInt()) {
    bool lossless = false;
    uint64_t v = value.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw CodeError(env, "ERR_VHOST_INVALID_ARG", std::string(name) + " must fit in 64 bits");
    return v;
  }
  if (value.IsNumber()) {
    double d = value.As<Napi::Number>().DoubleValue();
    if (d < 0 || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d)))
      throw CodeError(env, "ERR_VHOST_INVALID_ARG", std::string(name) + " must be a non-negative integer");
    return static_cast<uint64_t>(d);
  }
  throw CodeError(env, "ERR_VHOST_INVALID_ARG", std::string(name) + " must be a bigint or number");
}

uint32_t U32Arg(const Napi::Value& value, const char* name) {
  uint64_t v = U64Arg(value, name);
  if (v > UINT32_MAX)
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", std::string(name) + " must fit in 32 bits");
  return static_cast<uint32_t>(v);
}

std::string StringArg(const Napi::Value& value, const char* name) {
  if (!value.IsString())
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", std::string(name) + " must be a string");
  std::string s = value.As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos)
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", std::string(name) + " must not contain NUL");
  return s;
}

bool IsIntIn(double d, int min, int max) {
  return d >= min && d <= max && d == std::trunc(d);  // NaN fails every comparison
}

int IntArg(const Napi::Value& value, const char* name, int min, int max) {
  if (!value.IsNumber())
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", std::string(name) + " must be a number");
  double d = value.As<Napi::Number>().DoubleValue();
  if (!IsIntIn(d, min, max))
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG",
                    std::string(name) + " must be an integer in " + std::to_string(min) + ".." +
                        std::to_string(max));
  return static_cast<int>(d);
}

uint64_t U64Field(const Napi::Object& obj, const char* name) {
  return U64Arg(obj.Get(name), name);
}

// setErrorClass(VhostError): errors thrown by the addon become instances of it.
static void SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction())
    throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "error class must be a function");
  Data(info.Env()).errorCtor = Napi::Persistent(info[0].As<Napi::Function>());
}

void InitErrors(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
}

}  // namespace vhost
