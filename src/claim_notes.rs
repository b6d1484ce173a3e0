//! Notes of claims whose commit may not be on disk yet.
//!
//! An executor commits its claim of due work without waiting for the WAL
//! flush (the flush of the round that follows makes it durable), which takes
//! one disk flush off every batch. What must survive is the claim of work
//! whose user code may crash the server: a crash throws away WAL that was not
//! written out, the claim with it, and the attempt would never count, so code
//! that crashes the server every time would do so forever. Before running
//! user code, the executor writes what it claimed to a file of its own (no
//! fsync: a crashing process does not take the kernel's page cache with it),
//! and clears the file once the claim is flushed. The launcher, starting after
//! a crash, applies the claims it finds noted that the WAL lost.
//!
//! Files live in `pg_jobs/` under the data directory, one per executor slot.
//! A note says where its claim's commit record is in the WAL, so that only
//! claims the WAL really lost are applied: not one flushed before a clean
//! shutdown, nor the notes in a copy of the data directory that became a
//! server of its own.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Directory of the notes, relative to the data directory (the workers' cwd).
pub fn directory() -> &'static Path {
    Path::new("pg_jobs")
}

/// One claimed queue row: a run (`step` empty) or one of its parallel steps,
/// and its claim count after the claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noted {
    pub run: String,
    pub step: String,
    pub claims: i32,
}

/// Where a claim's commit record is: its timeline and the record's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalPosition {
    pub timeline: u32,
    pub end: u64,
}

/// Whether the WAL lost a claim committed at `claim`, seen from a server on
/// `timeline` whose last checkpoint started at `redo`. After a crash, that is
/// the checkpoint ending recovery: what recovery replayed lies before it, so
/// a claim ending after it was not replayed. A promoted standby or a restored
/// backup runs on a new timeline; the notes it copied are not about its WAL.
pub fn lost(claim: WalPosition, timeline: u32, redo: u64) -> bool {
    claim.timeline == timeline && claim.end > redo
}

/// What a note file holds.
#[derive(Serialize, Deserialize)]
struct Note {
    claim: WalPosition,
    claimed: Vec<Noted>,
}

/// A note is its first line (JSON has no raw newline); what follows is left
/// from longer notes. Files are overwritten in place, never truncated: on
/// ext4, truncating a file with unwritten data starts writing it to disk.
const CLEARED: &[u8] = b"\n";

fn note_line(text: &[u8]) -> &[u8] {
    text.split(|byte| *byte == b'\n').next().unwrap_or_default()
}

fn slot_path(directory: &Path, slot: usize) -> PathBuf {
    directory.join(format!("claims.{slot}"))
}

/// The note file of one executor slot, kept open.
pub struct NoteFile {
    file: File,
}

impl NoteFile {
    /// Opens the slot's file, empty: whatever an earlier executor of the slot
    /// noted was applied or released by the launcher before this one started.
    pub fn open(directory: &Path, slot: usize) -> io::Result<NoteFile> {
        fs::create_dir_all(directory)?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(slot_path(directory, slot))?;
        Ok(NoteFile { file })
    }

    pub fn write(&mut self, claim: WalPosition, claimed: &[Noted]) -> io::Result<()> {
        let note = Note {
            claim,
            claimed: claimed.to_vec(),
        };
        let mut text = serde_json::to_vec(&note).map_err(io::Error::other)?;
        text.push(b'\n');
        self.file.write_all_at(&text, 0)
    }

    pub fn clear(&mut self) -> io::Result<()> {
        self.file.write_all_at(CLEARED, 0)
    }
}

/// Empties the note of a slot whose executor stopped without a crash: its
/// claim reaches the disk with the next flush of anyone.
pub fn clear_slot(directory: &Path, slot: usize) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .open(slot_path(directory, slot))
    {
        Ok(file) => file.write_all_at(CLEARED, 0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every noted claim that the WAL lost (see `lost`), and a message for each
/// file that could not be read (a torn write is possible only before user
/// code ran, so such a file is skipped).
pub fn read_lost(directory: &Path, timeline: u32, redo: u64) -> (Vec<Noted>, Vec<String>) {
    let (mut noted, mut problems) = (Vec::new(), Vec::new());
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (noted, problems),
        Err(e) => {
            problems.push(format!("{}: {e}", directory.display()));
            return (noted, problems);
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("claims."))
        {
            continue;
        }
        match fs::read(&path) {
            Ok(text) if note_line(&text).is_empty() => {}
            Ok(text) => match serde_json::from_slice::<Note>(note_line(&text)) {
                Ok(note) if lost(note.claim, timeline, redo) => noted.extend(note.claimed),
                Ok(_) => {}
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            },
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    (noted, problems)
}

/// Empties every note, once the launcher has applied them.
pub fn clear_all(directory: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("claims.") {
            OpenOptions::new()
                .write(true)
                .open(entry.path())?
                .write_all_at(CLEARED, 0)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim at 0/5000 on timeline 1, lost by a crash whose recovery ended at 0/4000.
    const AT: WalPosition = WalPosition {
        timeline: 1,
        end: 0x5000,
    };
    const TL: u32 = 1;
    const REDO: u64 = 0x4000;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pg_jobs-claim-notes-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn note(run: &str, step: &str, claims: i32) -> Noted {
        Noted {
            run: run.into(),
            step: step.into(),
            claims,
        }
    }

    #[test]
    fn notes_of_every_slot_are_read_back_and_cleared() {
        let dir = scratch("round-trip");
        let mut first = NoteFile::open(&dir, 0).unwrap();
        let mut second = NoteFile::open(&dir, 1).unwrap();
        first
            .write(AT, &[note("a", "", 1), note("a", "p\n\"q\"", 2)])
            .unwrap();
        second.write(AT, &[note("b", "", 3)]).unwrap();
        let (mut noted, problems) = read_lost(&dir, TL, REDO);
        noted.sort_by(|x, y| (&x.run, &x.step).cmp(&(&y.run, &y.step)));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            noted,
            [note("a", "", 1), note("a", "p\n\"q\"", 2), note("b", "", 3)]
        );
        clear_all(&dir).unwrap();
        assert_eq!(read_lost(&dir, TL, REDO), (vec![], vec![]));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_claims_past_recovery_on_this_timeline_were_lost() {
        assert!(lost(AT, TL, REDO));
        assert!(!lost(AT, TL, 0x5000), "replayed up to its end");
        assert!(!lost(AT, TL, 0x9000), "a clean shutdown's checkpoint");
        assert!(!lost(AT, 2, REDO), "a promoted copy");
        let dir = scratch("lost");
        let mut file = NoteFile::open(&dir, 0).unwrap();
        file.write(AT, &[note("a", "", 1)]).unwrap();
        assert_eq!(read_lost(&dir, TL, 0x9000), (vec![], vec![]));
        assert_eq!(read_lost(&dir, 2, REDO), (vec![], vec![]));
        assert_eq!(read_lost(&dir, TL, REDO).0, [note("a", "", 1)]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shorter_note_replaces_a_longer_one_and_clear_empties_it() {
        let dir = scratch("replace");
        let mut file = NoteFile::open(&dir, 3).unwrap();
        file.write(AT, &[note("long-run-id", "step", 7), note("x", "", 1)])
            .unwrap();
        file.write(AT, &[note("y", "", 2)]).unwrap();
        assert_eq!(read_lost(&dir, TL, REDO).0, [note("y", "", 2)]);
        file.clear().unwrap();
        assert!(read_lost(&dir, TL, REDO).0.is_empty());
        file.write(AT, &[note("z", "", 1)]).unwrap();
        clear_slot(&dir, 3).unwrap();
        clear_slot(&dir, 9).unwrap();
        assert!(read_lost(&dir, TL, REDO).0.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopening_a_slot_forgets_its_old_note_and_torn_files_are_reported() {
        let dir = scratch("reopen");
        NoteFile::open(&dir, 0)
            .unwrap()
            .write(AT, &[note("old", "", 1)])
            .unwrap();
        NoteFile::open(&dir, 0).unwrap();
        fs::write(
            dir.join("claims.1"),
            b"{\"postmaster\": 1, \"claimed\": [{\"run",
        )
        .unwrap();
        fs::write(dir.join("other"), b"not a note").unwrap();
        let (noted, problems) = read_lost(&dir, TL, REDO);
        assert!(noted.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("claims.1"), "{problems:?}");
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read_lost(&dir, TL, REDO), (vec![], vec![]));
    }
}
