"""Exact float rounding, the slow and obviously correct way: Python Fractions.

round_to_format(x, mbits, emin, emax) -> the bit pattern (with sign) of the nearest value of
a binary format with `mbits` stored mantissa bits and normal exponents [emin, emax], ties
to even, overflow to infinity. Used to check F64 -> BF16 / F16, where ml_dtypes rounds twice
(through F32) and so cannot be the reference.
"""
from fractions import Fraction
import math


def round_to_format(x, mbits, emin, emax):
    ebits = (emax - emin + 2).bit_length()
    sign = 1 << (mbits + ebits) if math.copysign(1.0, x) < 0 else 0
    inf = ((1 << ebits) - 1) << mbits
    if math.isinf(x):
        return sign | inf
    a = abs(Fraction(x))
    if a == 0:
        return sign
    # every representable magnitude is q * 2^(e - mbits) with e >= emin
    e = max(math.floor(math.log2(a)), emin)
    # fix up floor(log2) errors on huge/tiny Fractions
    while Fraction(2) ** e > a and e > emin:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    unit = Fraction(2) ** (e - mbits)
    q, rem = divmod(a, unit)
    q = int(q)
    if rem > unit / 2 or (rem == unit / 2 and q % 2 == 1):
        q += 1
    if q >= (1 << (mbits + 1)):  # carried into the next binade
        q >>= 1
        e += 1
    if e > emax:
        return sign | inf
    if q < (1 << mbits):  # subnormal (only possible when e == emin)
        return sign | q
    return sign | ((e - emin + 1) << mbits) | (q - (1 << mbits))


def f64_to_bf16_bits(x):
    return round_to_format(x, 7, -126, 127)


def f64_to_f16_bits(x):
    return round_to_format(x, 10, -14, 15)
