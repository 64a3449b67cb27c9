//! Which test images a report shows: the ones worth a look. First the worst cases, the
//! highest-scoring good images (false alarms, or the nearest to one) and the lowest-scoring
//! defects (misses, or the nearest to one), then the clearest correct ones of each kind, so
//! that a capped gallery still shows both ends of both score distributions.

/// The four galleries, in the order the report shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gallery {
    HighestGood,
    LowestDefect,
    HighestDefect,
    LowestGood,
}

impl Gallery {
    pub const ALL: [Gallery; 4] =
        [Gallery::HighestGood, Gallery::LowestDefect, Gallery::HighestDefect, Gallery::LowestGood];

    pub fn heading(self) -> &'static str {
        match self {
            Gallery::HighestGood => "Highest-scoring good images (false alarms when above the threshold)",
            Gallery::LowestDefect => "Lowest-scoring defects (missed when at or below the threshold)",
            Gallery::HighestDefect => "Clearest defects (highest scores)",
            Gallery::LowestGood => "Clearest good images (lowest scores)",
        }
    }

    fn anomalous(self) -> bool {
        matches!(self, Gallery::LowestDefect | Gallery::HighestDefect)
    }

    fn highest_first(self) -> bool {
        matches!(self, Gallery::HighestGood | Gallery::HighestDefect)
    }
}

/// One image to show: its index in the scored set and its rank among the images of its kind
/// (1 = the highest score for `HighestGood` and `HighestDefect`, the lowest for the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub gallery: Gallery,
    pub rank: usize,
    /// Images of this kind (good or defective) in all.
    pub of: usize,
}

impl Pick {
    /// e.g. "1st highest of 120 good: score 2.310, flagged anomalous (false alarm)".
    pub fn caption(&self, score: f32, threshold: f32) -> String {
        let kinds = if self.gallery.anomalous() { "defects" } else { "good" };
        let end = if self.gallery.highest_first() { "highest" } else { "lowest" };
        let verdict = match (score > threshold, self.gallery.anomalous()) {
            (true, false) => "flagged anomalous (false alarm)",
            (false, true) => "passed as normal (missed)",
            (true, true) => "flagged anomalous",
            (false, false) => "passed as normal",
        };
        format!("{} {end} of {} {kinds}: score {score:.3}, {verdict}", ordinal(self.rank), self.of)
    }
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// The galleries take turns in this order, one image per turn, until `cap` images are picked or
/// none is left: the worst cases get two turns in three.
const TURNS: [Gallery; 6] = [
    Gallery::HighestGood,
    Gallery::LowestDefect,
    Gallery::HighestGood,
    Gallery::LowestDefect,
    Gallery::HighestDefect,
    Gallery::LowestGood,
];

/// At most `cap` images, each at most once, ordered by gallery then rank. Ties in score are
/// ranked by index, so the choice is the same on every run. Panics if the lengths differ.
pub fn pick_examples(scores: &[f32], anomalous: &[bool], cap: usize) -> Vec<Pick> {
    assert_eq!(scores.len(), anomalous.len(), "examples: {} scores for {} labels", scores.len(), anomalous.len());
    let ranked = |defective: bool| {
        let mut order: Vec<usize> = (0..scores.len()).filter(|&i| anomalous[i] == defective).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        order
    };
    let (good, defects) = (ranked(false), ranked(true));
    let order_of = |g: Gallery| if g.anomalous() { &defects } else { &good };
    // The next rank (0-based) each gallery would take.
    let mut next = [0usize; 4];
    let mut taken = vec![false; scores.len()];
    let mut picks = Vec::new();
    let mut idle_turns = 0;
    for &gallery in TURNS.iter().cycle() {
        if picks.len() == cap || idle_turns == TURNS.len() {
            break;
        }
        let slot = Gallery::ALL.iter().position(|&g| g == gallery).expect("every gallery is listed");
        let order = order_of(gallery);
        let at = |rank: usize| if gallery.highest_first() { order[order.len() - 1 - rank] } else { order[rank] };
        while next[slot] < order.len() && taken[at(next[slot])] {
            next[slot] += 1;
        }
        if next[slot] == order.len() {
            idle_turns += 1;
            continue;
        }
        idle_turns = 0;
        let index = at(next[slot]);
        taken[index] = true;
        picks.push(Pick { index, gallery, rank: next[slot] + 1, of: order.len() });
        next[slot] += 1;
    }
    picks.sort_by_key(|p| (Gallery::ALL.iter().position(|&g| g == p.gallery), p.rank));
    picks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_cases_come_first_and_nothing_twice() {
        // Good 0.1 .. 0.9 (indices 0..9), defects 0.5 .. 1.4 (indices 9..19).
        let scores: Vec<f32> = (1..10).map(|i| i as f32 / 10.0).chain((5..15).map(|i| i as f32 / 10.0)).collect();
        let labels: Vec<bool> = (0..19).map(|i| i >= 9).collect();
        let picks = pick_examples(&scores, &labels, 6);
        let by = |g: Gallery| picks.iter().filter(|p| p.gallery == g).map(|p| p.index).collect::<Vec<_>>();
        assert_eq!(by(Gallery::HighestGood), [8, 7]);
        assert_eq!(by(Gallery::LowestDefect), [9, 10]);
        assert_eq!(by(Gallery::HighestDefect), [18]);
        assert_eq!(by(Gallery::LowestGood), [0]);
        assert_eq!(
            picks[0].caption(scores[8], 0.85),
            "1st highest of 9 good: score 0.900, flagged anomalous (false alarm)"
        );

        // Three images, cap above them: each shown once, and the turns stop.
        let picks = pick_examples(&[0.2, 0.1, 0.9], &[false, false, true], 50);
        let mut shown: Vec<usize> = picks.iter().map(|p| p.index).collect();
        shown.sort();
        assert_eq!(shown, [0, 1, 2]);
        assert!(pick_examples(&[0.2], &[false], 0).is_empty());
    }

    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 111].into_iter().map(ordinal).collect();
        assert_eq!(got, ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th"]);
    }
}
