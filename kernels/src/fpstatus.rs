//! The floating-point exception flags of a thread: how an inference learns that its
//! arithmetic left the f32 range.
//!
//! Inputs are checked finite before a run, so a NaN or infinity inside the network can
//! only come from an operation that overflowed (a finite value beyond f32's range), was
//! invalid (`inf - inf`, `0 * inf`) or divided by zero. The CPU records each of these in
//! sticky flags of the thread's MXCSR register at no cost to the kernels, and the flags
//! survive what the values do not: a ReLU (`max(x, 0)`) turns a NaN into 0, and a
//! sigmoid turns an infinity into a plausible 0 or 1. So the executors read the flags
//! after each node instead of scanning the values.
//!
//! Only the invalid-operation, division-by-zero and overflow flags count: underflow,
//! denormal and inexact results are ordinary in a network. So that an ordinary result
//! raises none of them, the sigmoids take `exp` of non-positive arguments only, and the
//! INT8 epilogues' float-to-int conversions, which can see values below i32's range
//! before they clamp, raise no flag (AVX-512 suppresses it, the ymm tiers clamp first).

/// The exception flags that mean a value left the f32 range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpExceptions(u32);

/// MXCSR bits: invalid operation, division by zero, overflow.
const INVALID: u32 = 1 << 0;
const DIVIDE_BY_ZERO: u32 = 1 << 2;
const OVERFLOW: u32 = 1 << 3;
const COUNTED: u32 = INVALID | DIVIDE_BY_ZERO | OVERFLOW;

impl FpExceptions {
    /// No flag raised.
    pub const NONE: FpExceptions = FpExceptions(0);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: FpExceptions) -> FpExceptions {
        FpExceptions(self.0 | other.0)
    }

    /// The raw bits, for sharing through an atomic.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Flags from `bits` (other bits are dropped).
    pub fn from_bits(bits: u32) -> FpExceptions {
        FpExceptions(bits & COUNTED)
    }

    /// The flags raised, in words: "overflow", "invalid operation (NaN)", "division by
    /// zero", joined by " and ".
    pub fn describe(self) -> String {
        let names = [
            (OVERFLOW, "overflow"),
            (INVALID, "invalid operation (NaN)"),
            (DIVIDE_BY_ZERO, "division by zero"),
        ];
        let raised: Vec<&str> = names
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, n)| *n)
            .collect();
        raised.join(" and ")
    }
}

/// The calling thread's flags raised since its last `take`, which are cleared.
pub fn take() -> FpExceptions {
    imp::take()
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{FpExceptions, COUNTED};

    pub fn take() -> FpExceptions {
        let mut csr: u32 = 0;
        // safety: `stmxcsr` stores the 4-byte MXCSR of this thread to `csr`, a valid
        // u32 on the stack; SSE is part of x86-64.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        }
        let raised = csr & COUNTED;
        if raised != 0 {
            // Written only when a counted flag is set: loading MXCSR costs more than
            // reading it, and the inexact flag is set by almost every inference.
            let cleared = csr & !COUNTED;
            // safety: `ldmxcsr` loads a valid MXCSR value from `cleared`: the one just
            // read with three status bits cleared (no control or reserved bit changes).
            unsafe {
                std::arch::asm!("ldmxcsr [{}]", in(reg) &cleared, options(nostack, preserves_flags, readonly));
            }
        }
        FpExceptions(raised)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::FpExceptions;

    /// Other architectures: no flags read (nothing is detected).
    pub fn take() -> FpExceptions {
        FpExceptions::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Floats the optimizer cannot fold, so the operations run on the CPU.
    fn opaque(x: f32) -> f32 {
        std::hint::black_box(x)
    }

    #[test]
    fn overflow_is_raised_once_and_then_cleared() {
        take();
        let y = opaque(3e38) * opaque(10.0);
        assert!(y.is_infinite());
        let raised = take();
        assert_eq!(raised.describe(), "overflow");
        assert!(take().is_empty(), "take clears what it returns");
    }

    #[test]
    fn invalid_operations_and_division_by_zero_are_raised() {
        take();
        let nan = opaque(f32::INFINITY) - opaque(f32::INFINITY);
        assert!(nan.is_nan());
        assert_eq!(take().describe(), "invalid operation (NaN)");
        let inf = opaque(1.0) / opaque(0.0);
        assert!(inf.is_infinite());
        assert_eq!(take().describe(), "division by zero");
    }

    #[test]
    fn ordinary_arithmetic_raises_nothing() {
        take();
        // Inexact results and underflow to a denormal are not counted.
        let tiny = opaque(1e-30) * opaque(1e-10);
        let third = opaque(1.0) / opaque(3.0);
        assert!(tiny > 0.0 && third > 0.3);
        assert!(take().is_empty());
    }

    #[test]
    fn flags_are_per_thread() {
        take();
        std::thread::spawn(|| {
            let _ = opaque(3e38) * opaque(10.0);
        })
        .join()
        .unwrap();
        assert!(take().is_empty());
    }
}
