//! Long-context tasks: can a model find and use something far back? Synthetic, byte-level
//! examples generated from a seed, each exactly `length` bytes long with its answer last:
//!
//! - **passkey** (Mohtashami & Jaggi 2023): a five-digit number hidden in filler at a chosen
//!   depth, asked for at the end;
//! - **needles** (multi-key needle in a haystack, as in RULER, Hsieh et al. 2024): four
//!   name–value pairs spread through the filler, the one at the chosen depth asked for;
//! - **vars** (RULER's variable tracking): two chains of assignments (`VAR abc = 12345.`,
//!   then `VAR def = abc.`, …), the queried chain's first link at the chosen depth, asked for
//!   the value its last name holds.
//!
//! Depth is where the asked-for fact starts, as a fraction of the filler before it (0: at
//! the start, 1: just before the question). A model answers right when its most likely next
//! byte is the answer's at every answer position (teacher forcing: [`Example::answer`]).

use std::ops::Range;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::models::gpt::Params;
use crate::models::gpt_gpu::GptGpu;
use crate::runtime::Gpu;

/// Which task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A number hidden in filler, asked for at the end.
    Passkey,
    /// Several name–value pairs, one asked for.
    Needles,
    /// Chains of assignments; the value a chain's last name holds.
    Vars,
}

impl Task {
    /// Every task.
    pub const ALL: [Task; 3] = [Task::Passkey, Task::Needles, Task::Vars];

    /// The task's name in flags and records.
    pub fn name(self) -> &'static str {
        match self {
            Task::Passkey => "passkey",
            Task::Needles => "needles",
            Task::Vars => "vars",
        }
    }

    /// From its name.
    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|t| t.name() == text.trim()).ok_or_else(|| {
            Error::Invalid(format!("unknown task `{text}`; expected passkey, needles or vars"))
        })
    }
}

/// One example: `text` (exactly the length asked for) ends with the answer at `answer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The bytes, question and answer last.
    pub text: Vec<u8>,
    /// Where the answer's bytes are in `text` (its last bytes).
    pub answer: Range<usize>,
}

/// The filler's sentences (the passkey literature's kind: true, dull, unrelated); the
/// filler ends with spaces where no whole sentence fits.
const FILLER: [&str; 8] = [
    "The grass is green. ",
    "The sky is blue. ",
    "The sun is yellow. ",
    "Here we go. ",
    "There and back again. ",
    "The river runs to the sea. ",
    "The hills are far away. ",
    "The night is long and quiet. ",
];

/// Five digits, never starting with 0.
fn number(rng: &mut StdRng) -> String {
    rng.random_range(10_000u32..100_000).to_string()
}

/// A three-letter lower-case name not in `taken`.
fn name(rng: &mut StdRng, taken: &mut Vec<String>) -> String {
    loop {
        let n: String = (0..3).map(|_| rng.random_range(b'a'..=b'z') as char).collect();
        if !taken.contains(&n) {
            taken.push(n.clone());
            return n;
        }
    }
}

/// An example of `task`, exactly `length` bytes, the asked-for fact at `depth` (0..=1),
/// drawn from `seed` alone. A length too short for the task's sentences is an error that
/// names the shortest.
pub fn example(task: Task, length: usize, depth: f64, seed: u64) -> Result<Example> {
    if !(0.0..=1.0).contains(&depth) {
        return Err(Error::Invalid(format!("task depth {depth}: choose a fraction in 0..=1")));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut taken = Vec::new();
    // (sentence, depth) to place in the filler, the question, the answer
    let (facts, question, answer): (Vec<(String, f64)>, String, String) = match task {
        Task::Passkey => {
            let key = number(&mut rng);
            (
                vec![(format!("The pass key is {key}. Remember it. {key} is the pass key. "), depth)],
                "What is the pass key? The pass key is ".into(),
                key,
            )
        }
        Task::Needles => {
            let mut facts = Vec::new();
            let mut asked = None;
            for i in 0..4 {
                let (n, v) = (name(&mut rng, &mut taken), number(&mut rng));
                let at = if i == 0 { depth } else { rng.random_range(0.0..=1.0) };
                facts.push((format!("The value of {n} is {v}. "), at));
                if i == 0 {
                    asked = Some((n, v));
                }
            }
            let (n, v) = asked.expect("the first pair is asked");
            (facts, format!("What is the value of {n}? The value of {n} is "), v)
        }
        Task::Vars => {
            let mut facts = Vec::new();
            let mut asked = None;
            for chain in 0..2 {
                let value = number(&mut rng);
                let start = if chain == 0 { depth } else { rng.random_range(0.0..=1.0) };
                let mut prev = name(&mut rng, &mut taken);
                facts.push((format!("VAR {prev} = {value}. "), start));
                for _ in 0..2 {
                    let next = name(&mut rng, &mut taken);
                    // each link after the one before it
                    let at = rng.random_range(start..=1.0);
                    facts.push((format!("VAR {next} = {prev}. "), at));
                    prev = next;
                }
                if chain == 0 {
                    asked = Some((prev, value));
                }
            }
            let (n, v) = asked.expect("the first chain is asked");
            (facts, format!("Which value does {n} hold? {n} = "), v)
        }
    };
    let fixed = facts.iter().map(|(s, _)| s.len()).sum::<usize>() + question.len() + answer.len();
    if length < fixed {
        return Err(Error::Invalid(format!(
            "a {} example needs at least {fixed} bytes; {length} asked",
            task.name()
        )));
    }
    // whole sentences of filler while they fit, then spaces to the exact length; `bounds`
    // are the sentence starts
    let want = length - fixed;
    let (mut filler, mut bounds) = (Vec::with_capacity(want), vec![0usize]);
    loop {
        let next = FILLER[rng.random_range(0..FILLER.len())].as_bytes();
        if filler.len() + next.len() > want {
            break;
        }
        filler.extend_from_slice(next);
        bounds.push(filler.len());
    }
    filler.resize(want, b' ');
    // each fact at the sentence start nearest its depth (stable order for equal places, so
    // a chain's links keep their order)
    let mut placed: Vec<(usize, usize, &str)> = facts
        .iter()
        .enumerate()
        .map(|(i, (s, at))| {
            let target = (at * want as f64).round() as usize;
            let b = *bounds.iter().min_by_key(|&&b| b.abs_diff(target)).expect("0 is a bound");
            (b, i, s.as_str())
        })
        .collect();
    placed.sort();
    let mut text = Vec::with_capacity(length);
    let mut from = 0;
    for (at, _, s) in placed {
        text.extend_from_slice(&filler[from..at]);
        text.extend_from_slice(s.as_bytes());
        from = at;
    }
    text.extend_from_slice(&filler[from..]);
    text.extend_from_slice(question.as_bytes());
    text.extend_from_slice(answer.as_bytes());
    debug_assert_eq!(text.len(), length);
    Ok(Example { answer: length - answer.len()..length, text })
}

/// The seed of example `i` of a (task, length, depth) cell, from the run's `seed`: every cell
/// draws its own examples, the same ones whatever else is evaluated.
pub fn example_seed(seed: u64, task: Task, length: usize, depth: f64, i: usize) -> u64 {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for x in [task as u64, length as u64, depth.to_bits(), i as u64] {
        h = (h ^ x).wrapping_mul(0x1000_0000_01B3).rotate_left(29);
    }
    h
}

/// Task examples mixed into training batches (`longctx train --tasks … --task-share …`), so a
/// small model can learn the retrieval skill at its training length.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskMix {
    /// The tasks drawn from (none: plain text only).
    pub tasks: Vec<Task>,
    /// The share of a batch's sequences that are task examples (0..=1).
    pub share: f64,
}

impl TaskMix {
    /// Whether any sequence is a task example.
    pub fn active(&self) -> bool {
        !self.tasks.is_empty() && self.share > 0.0
    }

    /// The share in range, tasks named once, and room for every task at `length` bytes.
    pub fn check(&self, length: usize) -> Result<()> {
        if !(0.0..=1.0).contains(&self.share) {
            return Err(Error::Invalid(format!("task share {}: choose a fraction in 0..=1", self.share)));
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if self.tasks[..i].contains(t) {
                return Err(Error::Invalid(format!("task {} is given twice", t.name())));
            }
            example(*t, length, 0.0, 0)?;
        }
        Ok(())
    }

    /// With probability `share`, an example of `length` bytes of a task drawn from `rng`
    /// (its depth uniform in 0..=1); otherwise `None`. Draws nothing when inactive.
    pub fn draw(&self, rng: &mut impl Rng, length: usize) -> Result<Option<Vec<u8>>> {
        if !self.active() || rng.random::<f64>() >= self.share {
            return Ok(None);
        }
        let task = self.tasks[rng.random_range(0..self.tasks.len())];
        let depth = rng.random_range(0.0..=1.0);
        Ok(Some(example(task, length, depth, rng.random())?.text))
    }
}

/// One (task, length, depth) cell of an evaluation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskCell {
    /// The task.
    pub task: Task,
    /// Example length in bytes.
    pub length: usize,
    /// Where the asked-for fact sits (0..=1).
    pub depth: f64,
    /// Examples run.
    pub examples: usize,
    /// Examples answered right: every answer byte the model's most likely.
    pub correct: usize,
}

impl TaskCell {
    /// The share answered right.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.examples.max(1) as f64
    }
}

/// One checkpoint's task evaluation, as `longctx eval --task --json` writes it (a list).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskReport {
    /// The checkpoint's path.
    pub checkpoint: String,
    /// Its positional scheme.
    pub pos: crate::models::gpt::PosScheme,
    /// Its blocks' attention.
    pub attn: crate::models::gpt::AttnKind,
    /// RoPE's rescaling at evaluation (`none`, `pi:4`, …).
    pub rope_scaling: String,
    /// The window with sinks at evaluation (none: full causal).
    #[serde(default)]
    pub window: Option<crate::models::gpt::SinkWindow>,
    /// Its training length.
    pub train_len: usize,
    /// One cell per (length, depth).
    pub cells: Vec<TaskCell>,
}

/// How a model (`params`) does on `task` at `length` bytes, at each of `depths`: `examples`
/// examples per depth (drawn by [`example_seed`] from `seed`), batched up to
/// `tokens_per_call` tokens a forward on the GPU. An example is right when the model's most
/// likely next byte is the answer's at each of its positions, reading the example's own bytes
/// before it (teacher forcing).
pub fn evaluate_task(
    gpu: &Gpu,
    params: &Params,
    (task, length): (Task, usize),
    depths: &[f64],
    examples: usize,
    seed: u64,
    tokens_per_call: usize,
) -> Result<Vec<TaskCell>> {
    if examples == 0 || depths.is_empty() {
        return Err(Error::Invalid("a task evaluation needs at least one depth and one example".into()));
    }
    let all: Vec<(usize, Example)> = depths
        .iter()
        .enumerate()
        .flat_map(|(di, &depth)| {
            (0..examples)
                .map(move |i| (di, example(task, length, depth, example_seed(seed, task, length, depth, i))))
        })
        .map(|(di, e)| e.map(|e| (di, e)))
        .collect::<Result<_>>()?;
    let batch = (tokens_per_call / length).clamp(1, all.len());
    let model = GptGpu::new(gpu, params.config, batch, length)?;
    model.load(gpu, &params.data)?;
    let v = params.config.vocab;
    let mut correct = vec![0usize; depths.len()];
    for group in all.chunks(batch) {
        let mut inputs = Vec::with_capacity(batch * length);
        for i in 0..batch {
            // a short last group repeats its first example, counted once
            let e = &group.get(i).unwrap_or(&group[0]).1;
            inputs.extend(e.text.iter().map(|&b| u32::from(b)));
        }
        // no targets: only the logits are read back
        model.set_tokens(gpu, &inputs, &vec![u32::MAX; inputs.len()])?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        model.encode_forward(gpu, &mut enc, 1.0)?;
        gpu.queue.submit([enc.finish()]);
        let logits = model.logits(gpu)?;
        for (i, (di, e)) in group.iter().enumerate() {
            let right = e.answer.clone().all(|p| {
                let row = &logits[(i * length + p - 1) * v..][..v];
                crate::models::generate::argmax(row) == u32::from(e.text[p])
            });
            correct[*di] += usize::from(right);
        }
    }
    Ok(depths
        .iter()
        .zip(correct)
        .map(|(&depth, correct)| TaskCell { task, length, depth, examples, correct })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_have_the_length_the_answer_last_and_the_fact_at_its_depth() {
        for task in Task::ALL {
            for length in [200, 333, 1024] {
                for depth in [0.0, 0.25, 0.5, 1.0] {
                    let e = example(task, length, depth, 7).unwrap();
                    assert_eq!(e.text.len(), length, "{task:?}");
                    let answer = std::str::from_utf8(&e.text[e.answer.clone()]).unwrap();
                    assert_eq!(answer.len(), 5);
                    assert!(answer.bytes().all(|b| b.is_ascii_digit()), "{answer}");
                    // the answer is stated before the question, near the depth asked (at
                    // length 1024, where the other facts are a small part of the text)
                    let body = &e.text[..e.answer.start];
                    let text = String::from_utf8_lossy(body);
                    assert!(text.contains(answer), "{task:?}: {text}");
                    let first = text.find(answer).unwrap() as f64;
                    let room = body.len() as f64;
                    if length == 1024 {
                        assert!(
                            (first / room - depth).abs() < 0.15,
                            "{task:?} at {depth}: fact at {first} of {room}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn examples_depend_on_the_seed_only() {
        for task in Task::ALL {
            assert_eq!(example(task, 500, 0.3, 1).unwrap(), example(task, 500, 0.3, 1).unwrap());
            assert_ne!(example(task, 500, 0.3, 1).unwrap(), example(task, 500, 0.3, 2).unwrap());
        }
        assert_ne!(example_seed(1, Task::Vars, 512, 0.5, 0), example_seed(1, Task::Vars, 512, 0.5, 1));
        assert_ne!(example_seed(1, Task::Vars, 512, 0.5, 0), example_seed(1, Task::Vars, 1024, 0.5, 0));
    }

    #[test]
    fn a_chain_of_assignments_leads_to_the_answer() {
        let e = example(Task::Vars, 600, 0.2, 3).unwrap();
        let text = String::from_utf8(e.text.clone()).unwrap();
        let answer = &text[e.answer.clone()];
        // follow the asked name back through `VAR next = prev.` to a number
        let asked = text.rsplit("Which value does ").next().unwrap()[..3].to_string();
        let mut name = asked;
        for _ in 0..3 {
            let at = text.find(&format!("VAR {name} = ")).unwrap() + 10;
            let rhs: String = text[at..].chars().take_while(|c| *c != '.').collect();
            if rhs.chars().all(|c| c.is_ascii_digit()) {
                assert_eq!(rhs, answer);
                return;
            }
            name = rhs;
        }
        panic!("no number at the chain's start: {text}");
    }

    #[test]
    fn too_short_a_length_or_a_bad_depth_is_an_error() {
        let err = example(Task::Needles, 50, 0.5, 1).unwrap_err().to_string();
        assert!(err.contains("at least"), "{err}");
        assert!(example(Task::Passkey, 500, 1.5, 1).is_err());
        assert!(Task::parse("keys").is_err());
        assert_eq!(Task::parse("vars").unwrap(), Task::Vars);
    }
}
