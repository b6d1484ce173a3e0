//! Argument types pgrx does not provide: taken as raw datums so that a large
//! jsonb is neither parsed nor copied on the way in.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::prelude::*;
use pgrx::FromDatum;

/// A `regprocedure` argument: the OID of a function, resolved by PostgreSQL
/// from text such as `'hello(jsonb)'` with the caller's search_path.
pub struct RegProcedure(pub pg_sys::Oid);

/// A `jsonb` argument left as the datum PostgreSQL passed.
pub struct JsonbDatum(pub pg_sys::Datum);

impl FromDatum for RegProcedure {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then(|| RegProcedure(pg_sys::Oid::from(datum.value() as u32)))
    }
}

impl FromDatum for JsonbDatum {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then_some(JsonbDatum(datum))
    }
}

macro_rules! datum_argument {
    ($ty:ty, $sql:literal) => {
        pgrx::impl_sql_translatable!($ty, arg_only = $sql);

        unsafe impl<'fcx> ArgAbi<'fcx> for $ty {
            unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
                let index = arg.index();
                unsafe { arg.unbox_arg_using_from_datum() }
                    .unwrap_or_else(|| panic!("argument {index} must not be null"))
            }
        }
    };
}

datum_argument!(RegProcedure, "regprocedure");
datum_argument!(JsonbDatum, "jsonb");

impl JsonbDatum {
    /// Size of the value once decompressed, without decompressing it.
    pub fn size(&self) -> usize {
        unsafe { pg_sys::toast_raw_datum_size(self.0) }
    }

    pub fn is_object(&self) -> bool {
        // The root container header of a jsonb says whether it is an object,
        // an array, or a scalar (stored as a one-element array).
        unsafe {
            let detoasted = pg_sys::pg_detoast_datum_packed(self.0.cast_mut_ptr());
            let header_ptr = pgrx::vardata_any(detoasted) as *const u32;
            let header = header_ptr.read_unaligned();
            header & pg_sys::JB_FOBJECT != 0
        }
    }

    /// The value as JSON. Fails on documents nested deeper than serde_json's
    /// limit of 128 levels, which pg_jobs never parses (its parsers recurse).
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.to_text())
    }

    /// The value as JSON text, printed by PostgreSQL (no depth limit of ours).
    pub fn to_text(&self) -> String {
        unsafe {
            pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(self.0)])
                .expect("jsonb_out returns a value")
        }
        .to_string_lossy()
        .into_owned()
    }

    /// JSON text (which PostgreSQL or serde_json printed) as a jsonb datum,
    /// parsed by PostgreSQL's own jsonb_in.
    pub fn parse(text: &str) -> JsonbDatum {
        let text = std::ffi::CString::new(text).expect("JSON text has no NUL");
        JsonbDatum(
            unsafe {
                pgrx::direct_function_call_as_datum(
                    pg_sys::jsonb_in,
                    &[Some(pg_sys::Datum::from(text.as_ptr()))],
                )
            }
            .expect("jsonb_in returns a value"),
        )
    }
}
