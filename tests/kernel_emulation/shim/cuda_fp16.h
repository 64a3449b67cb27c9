// __half for the emulation: IEEE binary16 storage with the conversions of the real header (round to nearest
// even from float, exact to float), through the host compiler's _Float16.
#pragma once

#include "cuda_emu.h"

struct __half {
    unsigned short bits;

    __half() = default;
    __half(float f) {  // NOLINT: implicit, as in cuda_fp16.hpp
        const _Float16 h = static_cast<_Float16>(f);
        memcpy(&bits, &h, 2);
    }
    operator float() const {  // NOLINT: implicit, as in cuda_fp16.hpp
        _Float16 h;
        memcpy(&h, &bits, 2);
        return static_cast<float>(h);
    }
};
static_assert(sizeof(__half) == 2 && alignof(__half) == 2, "__half is two bytes, as on the device");

inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
