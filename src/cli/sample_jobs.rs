//! The videos of a `t2v-turbo sample` run, in order: their numbers (seeds), file names and
//! prompts; the prompts given or streamed from standard input; what an interrupted run
//! already wrote (`--resume`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;

use super::sample::{FileNames, SampleArgs};
use super::CliError;
use crate::pipeline::captions::{write_jsonl, CaptionRow};

/// One video: its number (its noise is seeded with --seed + number), file name and prompt.
pub struct Job {
    pub index: usize,
    pub name: String,
    pub prompt: String,
}

/// The run's videos: the prompts given, then (--prompts -) standard input's lines as they
/// arrive, each prompt --videos-per-prompt times in a row, named by --names; videos an
/// interrupted run finished (listed in its `captions.jsonl`) are not handed out again.
pub struct Jobs {
    batch: usize,
    per: usize,
    names: FileNames,
    pending: VecDeque<Job>,
    lines: Option<std::io::Lines<std::io::StdinLock<'static>>>,
    next_index: usize,
    per_prompt: HashMap<String, usize>,
    /// The captions file's rows: by video number, then those of the earlier run that no
    /// video of this one took (kept, not dropped), found by name.
    rows: BTreeMap<usize, CaptionRow>,
    earlier: Vec<Option<CaptionRow>>,
    earlier_by_name: HashMap<String, usize>,
    kept: usize,
}

impl Jobs {
    /// `earlier`: the rows of the `captions.jsonl` an interrupted run left (`--resume`).
    pub fn new(a: &SampleArgs, prompts: &[String], streamed: bool, earlier: Vec<CaptionRow>) -> Jobs {
        let mut jobs = Jobs {
            batch: a.batch,
            per: a.videos_per_prompt,
            names: a.names,
            pending: VecDeque::new(),
            lines: streamed.then(|| std::io::stdin().lines()),
            next_index: 0,
            per_prompt: HashMap::new(),
            rows: BTreeMap::new(),
            earlier_by_name: earlier.iter().enumerate().map(|(k, r)| (r.path.clone(), k)).collect(),
            earlier: earlier.into_iter().map(Some).collect(),
            kept: 0,
        };
        for p in prompts {
            jobs.push_prompt(p);
        }
        jobs
    }

    /// The prompt's --videos-per-prompt videos, numbered and named; those written already
    /// go straight to the rows.
    fn push_prompt(&mut self, prompt: &str) {
        for _ in 0..self.per {
            let index = self.next_index;
            self.next_index += 1;
            let name = match self.names {
                FileNames::Index => format!("{index:03}_{}", slug(prompt)),
                FileNames::Vbench => {
                    let k = self.per_prompt.entry(prompt.to_string()).or_insert(0);
                    *k += 1;
                    format!("{prompt}-{}", *k - 1)
                }
            };
            // written by the earlier run: kept if of this prompt, else made again (its row
            // goes, as its files will be replaced)
            if let Some(row) = self.earlier_by_name.remove(&name).and_then(|k| self.earlier[k].take()) {
                if row.caption == prompt {
                    self.rows.insert(index, row);
                    self.kept += 1;
                    continue;
                }
                eprintln!("note: {name} was made for {:?}; made again for {prompt:?}", row.caption);
            }
            self.pending.push_back(Job { index, name, prompt: prompt.to_string() });
        }
    }

    /// The next batch of videos to generate (at most --batch; fewer at the end of the
    /// input), reading standard input until the batch is full or the input ends.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Job>>, CliError> {
        while self.pending.len() < self.batch {
            let Some(line) = self.lines.as_mut().and_then(Iterator::next) else { break };
            let line = line.map_err(|e| CliError::Check(format!("--prompts -: reading standard input: {e}")))?;
            let p = line.trim();
            if p.is_empty() {
                continue;
            }
            // a line that cannot be named is skipped; the session goes on
            match check_file_name(self.names, p) {
                Ok(()) => self.push_prompt(p),
                Err(e) => eprintln!("skipped: {e}"),
            }
        }
        let n = self.pending.len().min(self.batch);
        Ok((n > 0).then(|| self.pending.drain(..n).collect()))
    }

    /// Videos to generate among those known so far (the prompts given, and the lines read).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Videos an earlier run had written and this one keeps.
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// Records a written video (listed at the next [`Jobs::write_captions`]).
    pub fn finished(&mut self, job: &Job) {
        self.rows.insert(job.index, CaptionRow { path: job.name.clone(), caption: job.prompt.clone(), short_caption: None });
    }

    /// Rewrites `captions.jsonl` atomically: the videos in order, then the earlier runs'
    /// rows no video of this run matched.
    pub fn write_captions(&self, out: &Path) -> Result<(), CliError> {
        let rows: Vec<CaptionRow> = self.rows.values().chain(self.earlier.iter().flatten()).cloned().collect();
        Ok(write_jsonl(&out.join("captions.jsonl"), &rows)?)
    }

    /// Whether any video is listed (written by this run or an earlier one).
    pub fn any(&self) -> bool {
        !self.rows.is_empty() || self.earlier.iter().any(Option::is_some)
    }
}

/// Refuses a prompt that --names vbench cannot use as a file name as it is.
pub fn check_file_name(names: FileNames, p: &str) -> Result<(), CliError> {
    let ok = p.len() <= 240 && !p.contains(['/', '\\']) && !p.chars().any(char::is_control) && p != "." && p != "..";
    if names == FileNames::Vbench && !ok {
        return Err(CliError::Check(format!("--names vbench: the prompt {p:?} cannot be a file name (it holds '/' or '\\' or a control character, is '.' or '..', or is over 240 bytes); use --names index")));
    }
    Ok(())
}

/// A prompt's first words as a file name: lowercase ASCII letters and digits joined by '_'.
fn slug(p: &str) -> String {
    let s: String = p.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    s.split('_').filter(|x| !x.is_empty()).collect::<Vec<_>>().join("_").chars().take(48).collect()
}
