//! The simulated machine: its temperature climbs from the ambient temperature towards 100 °C and then hovers
//! there, its pressure follows its temperature, and the room around it stays near 21 °C and 25 % humidity
//! (the model of Azure's SimulatedTemperatureSensor, whose message format this module keeps).

use serde::Serialize;

/// The machine starts (and restarts on `reset`) at this temperature.
pub const MACHINE_TEMPERATURE_MIN: f64 = 21.0;
/// Above this the machine's temperature stops climbing.
pub const MACHINE_TEMPERATURE_MAX: f64 = 100.0;
const MACHINE_PRESSURE_MIN: f64 = 1.0;
const MACHINE_PRESSURE_MAX: f64 = 10.0;
const AMBIENT_TEMPERATURE: f64 = 21.0;
const HUMIDITY_MIN: u32 = 24;
const HUMIDITY_SPREAD: u32 = 3;

/// One message body: `{"machine":{..},"ambient":{..},"timeCreated":".."}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reading {
    /// The machine.
    pub machine: Machine,
    /// The room.
    pub ambient: Ambient,
    /// When the reading was taken (RFC 3339, UTC).
    pub time_created: String,
}

/// The machine's sensors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    /// °C.
    pub temperature: f64,
    /// Bar.
    pub pressure: f64,
}

/// The room's sensors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ambient {
    /// °C.
    pub temperature: f64,
    /// Percent.
    pub humidity: u32,
}

/// The simulated machine and room.
#[derive(Debug, Clone)]
pub struct Simulation {
    random: XorShift,
    machine_temperature: f64,
}

impl Simulation {
    /// A machine at its starting temperature; `seed` makes the noise repeatable.
    pub fn new(seed: u64) -> Self {
        Self {
            random: XorShift(seed | 1),
            machine_temperature: MACHINE_TEMPERATURE_MIN,
        }
    }

    /// Advances one step and reads the sensors.
    pub fn next_reading(&mut self, time_created: String) -> Reading {
        let step = self.random.unit();
        self.machine_temperature += if self.machine_temperature > MACHINE_TEMPERATURE_MAX {
            step - 0.5
        } else {
            -0.25 + step * 1.5
        };
        let pressure = MACHINE_PRESSURE_MIN
            + (self.machine_temperature - MACHINE_TEMPERATURE_MIN)
                * (MACHINE_PRESSURE_MAX - MACHINE_PRESSURE_MIN)
                / (MACHINE_TEMPERATURE_MAX - MACHINE_TEMPERATURE_MIN);
        Reading {
            machine: Machine {
                temperature: self.machine_temperature,
                pressure,
            },
            ambient: Ambient {
                temperature: AMBIENT_TEMPERATURE + self.random.unit() - 0.5,
                humidity: HUMIDITY_MIN + (self.random.unit() * f64::from(HUMIDITY_SPREAD)) as u32,
            },
            time_created,
        }
    }

    /// The `reset` method: the machine cools back to its starting temperature.
    pub fn reset(&mut self) {
        self.machine_temperature = MACHINE_TEMPERATURE_MIN;
    }

    /// The machine's temperature now.
    #[cfg(test)]
    pub fn machine_temperature(&self) -> f64 {
        self.machine_temperature
    }
}

/// A small xorshift generator: noise for a simulation needs no more, and no dependency.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(simulation: &mut Simulation, n: usize) -> Vec<Reading> {
        (0..n)
            .map(|_| simulation.next_reading(String::new()))
            .collect()
    }

    #[test]
    fn the_machine_heats_up_towards_its_maximum_and_hovers_there() {
        let mut simulation = Simulation::new(7);
        let all = readings(&mut simulation, 400);
        assert!(all[0].machine.temperature < 23.0);
        let last = all.last().unwrap().machine.temperature;
        assert!((95.0..105.0).contains(&last), "{last}");
    }

    #[test]
    fn pressure_follows_temperature_and_the_room_stays_near_its_set_point() {
        let mut simulation = Simulation::new(3);
        for reading in readings(&mut simulation, 200) {
            assert!(reading.machine.pressure >= MACHINE_PRESSURE_MIN - 0.5);
            assert!((20.5..21.5).contains(&reading.ambient.temperature));
            assert!((24..=26).contains(&reading.ambient.humidity));
        }
    }

    #[test]
    fn reset_brings_the_machine_back_to_its_starting_temperature() {
        let mut simulation = Simulation::new(11);
        readings(&mut simulation, 100);
        assert!(simulation.machine_temperature() > 40.0);
        simulation.reset();
        assert!(simulation.machine_temperature() <= MACHINE_TEMPERATURE_MIN);
    }

    #[test]
    fn a_reading_serializes_in_the_azure_sample_format() {
        let reading = Reading {
            machine: Machine {
                temperature: 21.5,
                pressure: 1.1,
            },
            ambient: Ambient {
                temperature: 20.9,
                humidity: 25,
            },
            time_created: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(
            serde_json::to_value(&reading).unwrap(),
            serde_json::json!({
                "machine": {"temperature": 21.5, "pressure": 1.1},
                "ambient": {"temperature": 20.9, "humidity": 25},
                "timeCreated": "2026-01-01T00:00:00Z"
            })
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_readings() {
        let a = readings(&mut Simulation::new(5), 10);
        let b = readings(&mut Simulation::new(5), 10);
        assert_eq!(a, b);
    }
}
