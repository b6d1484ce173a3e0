//! Between PostgreSQL's timestamps (microseconds since 2000) and chrono's.

use chrono::{DateTime, TimeZone, Utc};
use pgrx::prelude::*;

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

pub fn to_pg(time: DateTime<Utc>) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(time.timestamp_micros() - POSTGRES_EPOCH_UNIX_MICROS).ok()
}

pub fn from_pg(time: TimestampWithTimeZone) -> Option<DateTime<Utc>> {
    Utc.timestamp_micros(pg_sys::TimestampTz::from(time) + POSTGRES_EPOCH_UNIX_MICROS)
        .single()
}

pub fn now() -> DateTime<Utc> {
    DateTime::<Utc>::from(std::time::SystemTime::now())
}
