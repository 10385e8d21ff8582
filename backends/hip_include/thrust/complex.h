// Stand-in for rocThrust's <thrust/complex.h>, used only by hipcc compile-only checks on hosts without rocThrust
// (Debian bookworm's ROCm 5.2). torch's headers include it under HIP for c10::complex conversions; a candidate that
// includes it itself gets this too (host-side std::complex), and real ROCm builds use rocThrust's own header.
#pragma once
#include <complex>
namespace thrust {
template <typename T> struct complex : std::complex<T> {
  using std::complex<T>::complex;
  complex(const std::complex<T>& z) : std::complex<T>(z) {}
};
using std::abs; using std::arg; using std::norm; using std::conj; using std::proj; using std::polar;
using std::exp; using std::log; using std::log10; using std::sqrt; using std::pow;
using std::sin; using std::cos; using std::tan; using std::asin; using std::acos; using std::atan;
using std::sinh; using std::cosh; using std::tanh; using std::asinh; using std::acosh; using std::atanh;
}
