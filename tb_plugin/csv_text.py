"""CSV text of numeric columns, built with numpy instead of one Python string per value.

Why: ``DataFrame.to_csv`` formats each float32 with numpy's Dragon4, one value at a time, and then
joins the fields row by row in Python; a pile-up-200 event has about 1.4 million floats, and writing
it took twice as long as simulating it (benchmarks/README.md). Here every field is laid out as bytes
in a fixed-width matrix (unused cells hold the byte 0), the fields and separators of a row are
placed side by side, and the 0 bytes are dropped in one pass, which leaves the CSV text.

The text is the same as pandas writes for the same typed columns: integers in decimal, and each
float32 as numpy's ``astype(str)`` writes it, the shortest decimal that reads back as the same
float32 (the one nearest the value when several are as short), positional for 1e-4 <= |v| < 1e6
(``0.00012``, ``1502.0``) and scientific otherwise (``4.8053653e-06``, ``1e+06``). The shortest
decimal is found in float64 arithmetic; a value whose answer that arithmetic cannot settle beyond
doubt (a rounding tie, a decimal within float64 rounding of a float32 boundary, a power of two,
non-finite or extreme magnitudes) is formatted by numpy itself, so the output never depends on luck.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_ZERO = ord("0")
_POW10_U64 = 10 ** np.arange(20, dtype=np.uint64)  # exact: 10**19 < 2**64
_EXP_MIN, _EXP_MAX = -30, 30  # decimal exponents handled here; beyond them numpy formats the value
_POW10_F64 = 10.0 ** np.arange(_EXP_MIN - 10, _EXP_MAX + 11)  # 10**i at index i - _EXP_MIN + 10
_SCI_BELOW, _SCI_FROM = 1e-4, 1e6  # numpy's float32 astype(str) is positional only in between
_INT_DIGITS, _FRAC_DIGITS = 7, 12  # positional layout: up to 9999999.x and 0.000123456789
_FLOAT_WIDTH = 1 + _INT_DIGITS + 1 + _FRAC_DIGITS  # sign, integer digits, point, fraction digits
_MAX_DIGITS = 9  # nine significant digits always identify a float32


def _pow10(exponent: np.ndarray) -> np.ndarray:
    """10.0**exponent as float64 (correctly rounded; exact for 0 <= exponent <= 22)."""
    return _POW10_F64[exponent - _EXP_MIN + 10]


def int_fields(values: np.ndarray) -> np.ndarray:
    """Decimal text of integers as a uint8 matrix [W, N] (one column per value), unused cells 0."""
    values = np.asarray(values).astype(np.int64)
    negative = values < 0
    magnitude = np.abs(values).astype(np.uint64)  # abs(int64 min) wraps to 2**63: right as uint64
    n_digits = _count_digits(magnitude)
    width = 1 + int(n_digits.max(initial=1))
    out = np.zeros((width, len(values)), dtype=np.uint8)
    for j in range(width - 1):  # j-th digit from the right
        quotient = magnitude // np.uint64(10)
        out[width - 1 - j] = np.where(j < n_digits, _ZERO + (magnitude - quotient * np.uint64(10)), 0)
        magnitude = quotient
    out[width - 1 - n_digits[negative], np.flatnonzero(negative)] = ord("-")
    return out


def float32_fields(values: np.ndarray) -> np.ndarray:
    """Text of float32 values as numpy's ``astype(str)`` writes it, as a uint8 matrix [W, N]."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    magnitude = np.abs(values.astype(np.float64))
    digits, exponent, sure = _shortest_digits(values, magnitude)
    out = np.zeros((_FLOAT_WIDTH, len(values)), dtype=np.uint8)
    negative = np.signbit(values)
    zero = sure & (magnitude == 0)
    out[-3:, zero] = np.frombuffer(b"0.0", dtype=np.uint8)[:, None]
    out[-4, zero & negative] = ord("-")
    scientific = (magnitude < _SCI_BELOW) | (magnitude >= _SCI_FROM)
    for rows, layout in ((sure & ~zero & ~scientific, _positional), (sure & ~zero & scientific, _scientific)):
        index = np.flatnonzero(rows)
        text = layout(digits[index], exponent[index], negative[index])
        out[: text.shape[0], index] = text
    unsure = np.flatnonzero(~sure)
    if unsure.size:
        text = np.array(values[unsure].astype(str), dtype=f"S{_FLOAT_WIDTH}")
        out[:, unsure] = text.view(np.uint8).reshape(len(unsure), _FLOAT_WIDTH).T
    return out


def _shortest_digits(values: np.ndarray, magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits D (no trailing zero) and exponent E of the shortest decimal D * 10**E that reads back
    as each float32, and whether that is certain (zeros count as certain, with D = 0).

    Reading back as v means lying closer to v than half the gap to its float32 neighbours (a
    decimal exactly half-way is left to numpy). Once a digit count reads back, every larger one
    does, so 7 digits are tried first (most simulated values need 7 or 8), then more digits for the
    values they do not fit and fewer for those they do, each count on the values still unsettled.
    The answer is certain when both its count and the count next to it were decided beyond doubt.
    """
    bits = values.view(np.uint32)
    sure = np.isfinite(magnitude) & (magnitude >= 10.0**_EXP_MIN) & (magnitude < 10.0**_EXP_MAX)
    sure &= (bits & 0x7FFFFF) != 0  # not a power of two: the gaps on both sides are equal
    safe = np.where(sure, magnitude, 1.5)  # [N] a placeholder where numpy will format the value
    half_gap = np.ldexp(1.0, ((bits >> 23) & 0xFF).astype(np.int32) - 151)  # half the float32 spacing
    half_gap = np.where(sure, half_gap, 2.0**-25)
    lead = np.floor(np.log10(safe)).astype(np.int64)  # power of ten of the first digit
    lead += (safe >= _pow10(lead + 1)).astype(np.int64) - (safe < _pow10(lead)).astype(np.int64)

    digits, reads_back, certain = _nearest_decimal(safe, lead, 7, half_gap)
    n_digits = np.full(len(safe), 7)
    doubt = ~certain  # the answer at the count tried last for each value may be wrong
    shorter, longer = np.flatnonzero(reads_back), np.flatnonzero(~reads_back)
    for count in (8, 9):  # upwards: the first count that reads back is the answer
        more, reads_back, certain = _nearest_decimal(safe[longer], lead[longer], count, half_gap[longer])
        done = longer[reads_back]
        digits[done], n_digits[done] = more[reads_back], count
        sure[done] &= ~doubt[done] & certain[reads_back]
        longer = longer[~reads_back]
        doubt[longer] = ~certain[~reads_back]
    sure[longer] = False  # nine digits always read back; if arithmetic says otherwise, numpy decides
    for count in range(6, 0, -1):  # downwards: the last count that reads back is the answer
        fewer, reads_back, certain = _nearest_decimal(safe[shorter], lead[shorter], count, half_gap[shorter])
        done = shorter[~reads_back]
        sure[done] &= ~doubt[done] & certain[~reads_back]
        shorter = shorter[reads_back]
        doubt[shorter] = ~certain[reads_back]
        digits[shorter], n_digits[shorter] = fewer[reads_back], count
    sure[shorter] &= ~doubt[shorter]
    exponent = lead - n_digits + 1
    trailing = (digits % np.uint64(10) == 0) & (digits > 0)  # a carry: 9.9999999 -> 10
    while trailing.any():
        digits = np.where(trailing, digits // np.uint64(10), digits)
        exponent += trailing
        trailing = (digits % np.uint64(10) == 0) & (digits > 0)
    sure |= magnitude == 0
    return np.where(sure, digits, 0), exponent, sure


def _nearest_decimal(
    magnitude: np.ndarray, lead: np.ndarray, n_digits: int, half_gap: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nearest decimal of `n_digits` significant digits, whether it reads back, and whether both
    answers are certain despite float64 rounding (a few times 1.1e-16 relative).

    When two decimals are about equally near, the answer is certain only if neither reads back.
    """
    shift = n_digits - 1 - lead  # decimal places of the last digit
    scaled = magnitude * _pow10(shift)  # below 1e9, so its rounding error is below 1e-6
    rounded = np.rint(scaled)
    value = rounded * _pow10(-shift)  # the decimal, within 1e-15 relative
    distance = np.abs(value - magnitude)
    tie = np.abs(scaled - rounded) > 0.5 - 1e-6
    too_far = 0.5 * (1 - 1e-5) * _pow10(-shift) >= half_gap  # both decimals of a tie are that far
    certain = (~tie | too_far) & (np.abs(distance - half_gap) > 1e-15 * value)
    return rounded.astype(np.uint64), distance < half_gap, certain


def _count_digits(digits: np.ndarray) -> np.ndarray:
    """Decimal digits of each non-negative integer (1 for 0)."""
    count = np.ones(len(digits), dtype=np.int64)
    for power in _POW10_U64[1:]:
        count += digits >= power
    return count


def _positional(digits: np.ndarray, exponent: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """``[-]int.frac`` with at least one digit each side; the column of each power of ten is fixed.

    The value is first made an integer count of 10**-_FRAC_DIGITS (below 1e19, so it fits uint64),
    then its digits are peeled off from the lowest power up.
    """
    fixed = digits * _POW10_U64[exponent + _FRAC_DIGITS]
    top = np.maximum(exponent + _count_digits(digits) - 1, 0)  # highest power shown
    bottom = np.minimum(exponent, -1)  # lowest power shown
    point = 1 + _INT_DIGITS
    out = np.zeros((_FLOAT_WIDTH, len(digits)), dtype=np.uint8)
    for power in range(-_FRAC_DIGITS, _INT_DIGITS):
        quotient = fixed // np.uint64(10)
        out[point - 1 - power if power >= 0 else point - power] = _ZERO + (fixed - quotient * np.uint64(10))
        fixed = quotient
    power_of_column = np.r_[np.arange(_INT_DIGITS, -1, -1), _INT_DIGITS, np.arange(-1, -_FRAC_DIGITS - 1, -1)]
    out *= (power_of_column[:, None] <= top[None, :]) & (power_of_column[:, None] >= bottom[None, :])
    out[point] = ord(".")
    out[point - 2 - top[negative], np.flatnonzero(negative)] = ord("-")
    return out


def _scientific(digits: np.ndarray, exponent: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """``[-]d[.ddd]e±XX``: first digit, the point only if more digits follow, two-digit exponent."""
    n_digits = _count_digits(digits)
    lead = exponent + n_digits - 1  # power of the first digit
    mantissa = digits * _POW10_U64[_MAX_DIGITS - n_digits]  # always _MAX_DIGITS digits
    out = np.zeros((3 + _MAX_DIGITS + 3, len(digits)), dtype=np.uint8)
    out[0, negative] = ord("-")
    out[2] = np.where(n_digits > 1, ord("."), 0)
    for j in range(_MAX_DIGITS - 1, -1, -1):  # j-th digit after the first, from the last
        quotient = mantissa // np.uint64(10)
        digit = _ZERO + (mantissa - quotient * np.uint64(10))
        out[1 if j == 0 else 2 + j] = np.where(j < n_digits, digit, 0)
        mantissa = quotient
    out[-4] = ord("e")
    out[-3] = np.where(lead < 0, ord("-"), ord("+"))
    out[-2] = _ZERO + np.abs(lead) // 10
    out[-1] = _ZERO + np.abs(lead) % 10
    return out


def csv_bytes(columns: Mapping[str, np.ndarray]) -> bytes:
    """The CSV text (header, then one ``\\n``-ended line per row) of equally long typed columns.

    float32 columns are written as shortest round-trip text, integer columns in decimal; any other
    dtype is refused, since its text would not be what pandas writes.
    """
    fields = []
    for name, values in columns.items():
        if values.dtype == np.float32:
            fields.append(float32_fields(values))
        elif values.dtype.kind in "iu":
            fields.append(int_fields(values))
        else:
            raise TypeError(f"column {name}: dtype {values.dtype} is neither float32 nor an integer type")
        fields.append(np.full((1, len(values)), ord(","), dtype=np.uint8))
    header = (",".join(columns) + "\n").encode()
    if not fields or not fields[0].shape[1]:
        return header
    fields[-1] = np.full_like(fields[-1], ord("\n"))
    table = np.concatenate(fields, axis=0).T  # [N, width]: row-major order is the text order
    return header + table[table != 0].tobytes()
