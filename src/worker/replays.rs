//! The launcher's side of jobs.replay: it starts each replay's runs a few at
//! a time and notes how far each replay got (jobs.replays).

use pgrx::prelude::*;

use crate::api::operations::{start_replay_item, ReplayItem};

/// Starts the next items of the replays under way, keeping at most
/// `max_in_flight` of their runs queued or running at once, and notes those
/// that finished. Returns whether a replay is still under way.
pub fn pump(max_in_flight: i64) -> bool {
    note_finished();
    for item in next_items(max_in_flight - in_flight()) {
        let started = start_replay_item(&item);
        // What cannot start any more (its function, run or event is gone)
        // counts as started and finished, so that the replay ends; the nil
        // id keeps it out of the items still to start.
        Spi::run_with_args(
            "WITH item AS (
                UPDATE jobs.replay_items SET run_id = coalesce($3, '00000000-0000-0000-0000-000000000000'),
                                             done = $3 IS NULL
                WHERE replay_id = $1 AND position = $2
             )
             UPDATE jobs.replay_requests SET started = started + 1,
                                             finished = finished + CASE WHEN $3 IS NULL THEN 1 ELSE 0 END
             WHERE id = $1",
            &[item.replay.into(), item.position.into(), started.into()],
        )
        .expect("noting a started replay run");
    }
    end_finished()
}

fn note_finished() {
    Spi::run(
        "WITH done AS (
            UPDATE jobs.replay_items i SET done = true
            FROM jobs.replay_requests q
            WHERE q.ended_at IS NULL AND i.replay_id = q.id AND i.run_id IS NOT NULL AND NOT i.done
              AND NOT EXISTS (SELECT FROM jobs.queue k WHERE k.run_id = i.run_id AND k.step_id = '')
            RETURNING i.replay_id
         )
         UPDATE jobs.replay_requests q SET finished = q.finished + d.n
         FROM (SELECT replay_id, count(*) AS n FROM done GROUP BY replay_id) d
         WHERE q.id = d.replay_id",
    )
    .expect("noting finished replay runs");
}

/// Replay runs that want an executor now: one that sleeps or waits for an
/// event takes none.
fn in_flight() -> i64 {
    Spi::get_one::<i64>(
        "SELECT count(*) FROM jobs.replay_requests q JOIN jobs.replay_items i ON i.replay_id = q.id
         JOIN jobs.queue k ON k.run_id = i.run_id AND k.step_id = ''
         WHERE q.ended_at IS NULL AND i.run_id IS NOT NULL AND NOT i.done AND k.due_at <= now()",
    )
    .expect("counting replay runs in flight")
    .unwrap_or(0)
}

/// The next `limit` items to start, oldest replay first.
fn next_items(limit: i64) -> Vec<ReplayItem> {
    if limit <= 0 {
        return Vec::new();
    }
    Spi::connect(|client| {
        client
            .select(
                "SELECT q.id, i.position, q.function_id, i.source_run_id, i.event_id
                 FROM jobs.replay_requests q
                 CROSS JOIN LATERAL (SELECT * FROM jobs.replay_items i
                                     WHERE i.replay_id = q.id AND i.run_id IS NULL
                                     ORDER BY i.position LIMIT $1) i
                 WHERE q.ended_at IS NULL AND q.cancelled_at IS NULL
                 ORDER BY q.created_at, i.position
                 LIMIT $1",
                None,
                &[limit.into()],
            )
            .expect("finding replay items to start")
            .map(|row| ReplayItem {
                replay: row.get(1).ok().flatten().expect("replay id"),
                position: row.get(2).ok().flatten().expect("position"),
                function_id: row.get(3).ok().flatten().expect("function id"),
                source_run_id: row.get(4).ok().flatten(),
                event_id: row.get(5).ok().flatten(),
            })
            .collect()
    })
}

/// Ends the replays with nothing left to start (or cancelled) and no run
/// unfinished; returns whether one is still under way.
fn end_finished() -> bool {
    Spi::get_one::<bool>(
        "WITH ended AS (
            UPDATE jobs.replay_requests q SET ended_at = now()
            WHERE q.ended_at IS NULL
              AND NOT EXISTS (SELECT FROM jobs.replay_items i
                              WHERE i.replay_id = q.id AND i.run_id IS NOT NULL AND NOT i.done)
              AND (q.cancelled_at IS NOT NULL
                   OR NOT EXISTS (SELECT FROM jobs.replay_items i WHERE i.replay_id = q.id AND i.run_id IS NULL))
            RETURNING 1
         )
         -- The statement sees the requests as they were before it ended any.
         SELECT (SELECT count(*) FROM jobs.replay_requests WHERE ended_at IS NULL) > (SELECT count(*) FROM ended)",
    )
    .expect("ending replays")
    .unwrap_or(false)
}
