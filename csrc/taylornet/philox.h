// Counter-based neuron signs: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC'11), keyed by a 64-bit seed. One call yields 128 random bits, so neuron r takes bit
// r % 128 of the block counted by r / 128 and the 64-bit offset. The same (seed, offset) gives the
// same signs on every device, for any blocking of the neurons.
#pragma once

#include <cstdint>

#include "common.h"

namespace tn {

struct Philox4x32 {
  uint32_t v[4];
};

TN_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

TN_HD Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kMul0, ctr.v[0], &hi0, &lo0);
    philox_mulhilo(kMul1, ctr.v[2], &hi1, &lo1);
    ctr = Philox4x32{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
  }
  return ctr;
}

// The 128 sign bits of neuron block `block` (neurons 128*block ... 128*block + 127).
TN_HD Philox4x32 sign_bits(uint64_t seed, uint64_t offset, uint64_t block) {
  const Philox4x32 ctr{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                        static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}};
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// +1 or -1 for neuron r: bit set means -1.
template <typename T>
TN_HD T neuron_sign(const Philox4x32& bits, uint64_t r) {
  const int b = static_cast<int>(r & 127u), w = b >> 5;
  // the word by selects: an array indexed at run time would live in a GPU thread's local memory
  const uint32_t word = w == 0 ? bits.v[0] : (w == 1 ? bits.v[1] : (w == 2 ? bits.v[2] : bits.v[3]));
  return ((word >> (b & 31)) & 1u) ? T(-1) : T(1);
}

template <typename T>
TN_HD T neuron_sign(uint64_t seed, uint64_t offset, uint64_t r) {
  return neuron_sign<T>(sign_bits(seed, offset, r >> 7), r);
}

}  // namespace tn
