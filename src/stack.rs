//! Code from libraries that recurses over user input (CEL evaluation, JSON
//! Schema compilation and validation) runs where plenty of stack is left, or
//! on a stack allocated for it: a backend's own stack is not PostgreSQL's to
//! lose, and `check_stack_depth` does not see Rust frames.

/// Least stack left for such code; below it, a new stack is allocated.
const RED_ZONE: usize = 4 << 20;
/// Size of that stack (reserved address space; pages are used as touched).
const STACK: usize = 32 << 20;

pub fn deep<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(RED_ZONE, STACK, f)
}
