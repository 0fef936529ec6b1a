//! `skip_serializing_if` predicates for Go's `omitempty` on numbers and booleans.

/// Go's `omitempty` for numbers (and anything whose zero value is its `Default`).
pub(crate) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
