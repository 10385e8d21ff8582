"""Stand-in C/C++ standard headers for NVRTC builds.

NVRTC ships no C/C++ standard headers. These small stand-ins make the usual includes of kernel
code (<cstdint>, <cfloat>, <cmath>, ...) compile; CUDA's own headers (<cuda_fp16.h>, <mma.h>,
<cuda/std/...>) come from the toolkit's include directory when one is found, and with it
``_CCCL_HEADERS`` map <limits>, <type_traits> and <utility> onto <cuda/std/...>.
``_HEADERS_VERSION`` is part of every NVRTC build's cache key.
"""

from __future__ import annotations

_HEADERS_VERSION = "1"

_STDINT = """#pragma once
typedef signed char int8_t; typedef short int16_t; typedef int int32_t; typedef long long int64_t;
typedef unsigned char uint8_t; typedef unsigned short uint16_t; typedef unsigned int uint32_t; typedef unsigned long long uint64_t;
typedef long long intptr_t; typedef unsigned long long uintptr_t; typedef long long intmax_t; typedef unsigned long long uintmax_t;
#ifndef INT8_MAX
#define INT8_MIN (-128)
#define INT8_MAX 127
#define INT16_MIN (-32768)
#define INT16_MAX 32767
#define INT32_MIN (-2147483647 - 1)
#define INT32_MAX 2147483647
#define INT64_MIN (-9223372036854775807LL - 1)
#define INT64_MAX 9223372036854775807LL
#define UINT8_MAX 255
#define UINT16_MAX 65535
#define UINT32_MAX 4294967295U
#define UINT64_MAX 18446744073709551615ULL
#endif
"""
_STD_INTS = "int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t intptr_t uintptr_t intmax_t uintmax_t".split()
_FLOAT = """#pragma once
#ifndef FLT_MAX
#define FLT_MAX 3.402823466e+38F
#define FLT_MIN 1.175494351e-38F
#define FLT_EPSILON 1.192092896e-07F
#define FLT_DIG 6
#define FLT_MANT_DIG 24
#define DBL_MAX 1.7976931348623158e+308
#define DBL_MIN 2.2250738585072014e-308
#define DBL_EPSILON 2.2204460492503131e-16
#define DBL_DIG 15
#define DBL_MANT_DIG 53
#endif
"""
_LIMITS_H = """#pragma once
#ifndef INT_MAX
#define CHAR_BIT 8
#define SCHAR_MIN (-128)
#define SCHAR_MAX 127
#define UCHAR_MAX 255
#define SHRT_MIN (-32768)
#define SHRT_MAX 32767
#define USHRT_MAX 65535
#define INT_MIN (-2147483647 - 1)
#define INT_MAX 2147483647
#define UINT_MAX 4294967295U
#define LONG_MIN (-9223372036854775807L - 1)
#define LONG_MAX 9223372036854775807L
#define ULONG_MAX 18446744073709551615UL
#define LLONG_MIN (-9223372036854775807LL - 1)
#define LLONG_MAX 9223372036854775807LL
#define ULLONG_MAX 18446744073709551615ULL
#endif
"""
_MATH_H = """#pragma once
#ifndef M_PI
#define M_E 2.7182818284590452354
#define M_LOG2E 1.4426950408889634074
#define M_LOG10E 0.43429448190325182765
#define M_LN2 0.69314718055994530942
#define M_LN10 2.30258509299404568402
#define M_PI 3.14159265358979323846
#define M_PI_2 1.57079632679489661923
#define M_PI_4 0.78539816339744830962
#define M_1_PI 0.31830988618379067154
#define M_2_PI 0.63661977236758134308
#define M_2_SQRTPI 1.12837916709551257390
#define M_SQRT2 1.41421356237309504880
#define M_SQRT1_2 0.70710678118654752440
#endif
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif
"""
_MATH_FUNCTIONS = (
    "exp expf exp2 exp2f expm1 expm1f log logf log2 log2f log10 log10f log1p log1pf sqrt sqrtf cbrt cbrtf pow powf "
    "sin sinf cos cosf tan tanf asin asinf acos acosf atan atanf atan2 atan2f sinh sinhf cosh coshf tanh tanhf "
    "erf erff erfc erfcf fabs fabsf fmax fmaxf fmin fminf fmod fmodf floor floorf ceil ceilf round roundf trunc truncf "
    "fma fmaf isinf isnan isfinite signbit copysign copysignf ldexp ldexpf frexp frexpf abs"
).split()
_CMATH = _MATH_H + "namespace std { " + " ".join(f"using ::{f};" for f in _MATH_FUNCTIONS) + " }\n"
_ASSERT = """#pragma once
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e) ((e) ? (void)0 : __trap())
#endif
"""
_VIRTUAL_HEADERS: dict[str, str] = {
    "stdint.h": _STDINT,
    "cstdint": _STDINT + "namespace std { " + " ".join(f"using ::{t};" for t in _STD_INTS) + " }\n",
    "float.h": _FLOAT,
    "cfloat": _FLOAT,
    "limits.h": _LIMITS_H,
    "climits": _LIMITS_H,
    "math.h": _MATH_H,
    "cmath": _CMATH,
    "assert.h": _ASSERT,
    "cassert": _ASSERT,
    "stdio.h": "#pragma once\n",
    "cstdio": "#pragma once\n",
    "stddef.h": "#pragma once\n#ifndef NULL\n#define NULL 0\n#endif\n",
    "cstddef": "#pragma once\n#ifndef NULL\n#define NULL 0\n#endif\nnamespace std { using ::size_t; using ::ptrdiff_t; }\n",
    "cuda_runtime.h": "#pragma once\n",  # NVRTC has the device runtime built in
}
_CCCL_HEADERS: dict[str, str] = {
    "limits": "#pragma once\n#include <cuda/std/limits>\nnamespace std { using cuda::std::numeric_limits; }\n",
    "type_traits": "#pragma once\n#include <cuda/std/type_traits>\nnamespace std { using namespace cuda::std; }\n",
    "utility": "#pragma once\n#include <cuda/std/utility>\nnamespace std { using cuda::std::swap; using cuda::std::pair; "
    "using cuda::std::move; using cuda::std::forward; }\n",
}
