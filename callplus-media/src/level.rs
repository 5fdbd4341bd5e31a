//! Audio level: 0–100 from PCM.

/// The level of 16-bit PCM samples, 0–100: the RMS relative to a full-scale sine (whose RMS is
/// 32767/√2), clamped. Silence is 0, a full-scale sine 100, a half-scale sine 50.
///
/// ```
/// assert_eq!(callplus_media::audio_level(&[0; 960]), 0);
/// ```
pub fn audio_level(pcm: &[i16]) -> u8 {
    if pcm.is_empty() {
        return 0;
    }
    let sum_sq: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    level_from_mean_square(sum_sq / pcm.len() as f64)
}

/// The level for a mean square of 16-bit samples.
pub(crate) fn level_from_mean_square(mean_sq: f64) -> u8 {
    let full_scale_sine_rms = 32767.0 / std::f64::consts::SQRT_2;
    let level = (mean_sq.sqrt() / full_scale_sine_rms * 100.0).round();
    level.clamp(0.0, 100.0) as u8
}

/// A level 0–100 (linear) as RFC 6464 carries it: −dBov, 0 the loudest, 127 silence.
pub(crate) fn minus_dbov(level: u8) -> u8 {
    if level == 0 {
        return 127;
    }
    let dbov = 20.0 * (f64::from(level.min(100)) / 100.0).log10();
    (-dbov).round().clamp(0.0, 127.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_levels() {
        let sine = |amp: f64| -> Vec<i16> {
            (0..4800).map(|i| (amp * 32767.0 * (i as f64 * 0.0576).sin()) as i16).collect()
        };
        assert_eq!(audio_level(&sine(1.0)), 100);
        let half = audio_level(&sine(0.5));
        assert!((49..=51).contains(&half), "{half}");
        assert_eq!(audio_level(&[]), 0);
    }

    #[test]
    fn dbov() {
        assert_eq!(minus_dbov(100), 0);
        assert_eq!(minus_dbov(10), 20);
        assert_eq!(minus_dbov(50), 6);
        assert_eq!(minus_dbov(0), 127);
    }
}
