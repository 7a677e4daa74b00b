//! Domain enumerations shared by the engine, the node's store and the wire: one Rust
//! enum each, with the stable snake_case name used in files, CSV and SQLite, the
//! Chinese term accepted on import, and the conversion to and from the proto enum.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, proto};

macro_rules! domain_enum {
    (
        $(#[$meta:meta])*
        $name:ident : $proto:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $pvariant:ident, $wire:literal $(| $alias:literal)* ; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable name used in files, CSV and the store.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)+ }
            }

            /// The Chinese term (the first import alias), for text output in Chinese;
            /// the stable name where there is none.
            #[must_use]
            pub fn zh_name(self) -> &'static str {
                match self { $($name::$variant => {
                    let terms: &[&'static str] = &[$($alias),*];
                    terms.first().copied().unwrap_or($wire)
                })+ }
            }

            /// Parses the stable name (or an accepted alias), case-insensitively.
            pub fn parse(s: &str, field: &str) -> Result<Self> {
                let t = s.trim();
                $(
                    if t.eq_ignore_ascii_case($wire) $(|| t == $alias)* {
                        return Ok($name::$variant);
                    }
                )+
                let names: &[&str] = &[$($wire),+];
                Err(Error::invalid(field, format!("unknown value {}; expected one of {}", $crate::error::quoted(t), names.join(", "))))
            }

            /// Converts from the wire enum; UNSPECIFIED and unknown numbers are errors.
            pub fn from_proto(v: i32, field: &str) -> Result<Self> {
                match proto::$proto::try_from(v) {
                    $( Ok(proto::$proto::$pvariant) => Ok($name::$variant), )+
                    _ => Err(Error::invalid(field, format!("missing or unknown {} ({v})", stringify!($proto)))),
                }
            }

            /// The wire enum value.
            #[must_use]
            pub fn to_proto(self) -> i32 {
                match self { $($name::$variant => proto::$proto::$pvariant as i32,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

domain_enum! {
    /// Insurance scheme.
    InsuranceType: InsuranceType {
        Employee = Employee, "employee" | "职工";
        Resident = Resident, "resident" | "居民";
    }
}

domain_enum! {
    /// Person type; fund ratios are set per person type.
    PersonType: PersonType {
        InService = InService, "in_service" | "在职";
        Retired = Retired, "retired" | "退休";
        ResidentAdult = ResidentAdult, "resident_adult" | "成年居民";
        ResidentMinor = ResidentMinor, "resident_minor" | "未成年";
        ResidentElderly = ResidentElderly, "resident_elderly" | "老年居民";
    }
}

domain_enum! {
    /// Enrolment status.
    PersonStatus: PersonStatus {
        Active = Active, "active" | "正常";
        Suspended = Suspended, "suspended" | "暂停";
        Terminated = Terminated, "terminated" | "终止";
        Deceased = Deceased, "deceased" | "死亡";
    }
}

domain_enum! {
    /// Cross-region filing type. `Temporary` marks unfiled care.
    FilingType: FilingType {
        ResettledRetiree = ResettledRetiree, "resettled_retiree" | "异地安置退休";
        LongTermResident = LongTermResident, "long_term_resident" | "异地长期居住";
        PostedWorker = PostedWorker, "posted_worker" | "常驻异地工作";
        Referral = Referral, "referral" | "异地转诊";
        Emergency = Emergency, "emergency" | "急诊抢救";
        Temporary = Temporary, "temporary" | "临时外出";
    }
}

impl FilingType {
    /// Long-term filings, which may name up to three designated institutions.
    #[must_use]
    pub fn is_long_term(self) -> bool {
        matches!(
            self,
            FilingType::ResettledRetiree | FilingType::LongTermResident | FilingType::PostedWorker
        )
    }
}

domain_enum! {
    /// Filing status.
    FilingStatus: FilingStatus {
        Applied = Applied, "applied";
        Approved = Approved, "approved";
        Rejected = Rejected, "rejected";
        Revoked = Revoked, "revoked";
    }
}

domain_enum! {
    /// Kind of visit.
    VisitKind: VisitKind {
        Outpatient = Outpatient, "outpatient" | "普通门诊";
        Pharmacy = Pharmacy, "pharmacy" | "药店购药";
        Chronic = Chronic, "chronic" | "门诊慢特病";
        Inpatient = Inpatient, "inpatient" | "住院";
        Emergency = Emergency, "emergency" | "门诊抢救";
    }
}

domain_enum! {
    /// Hospital level.
    HospitalLevel: HospitalLevel {
        Level1 = HospitalLevel1, "level1" | "1" | "一级";
        Level2 = HospitalLevel2, "level2" | "2" | "二级";
        Level3 = HospitalLevel3, "level3" | "3" | "三级";
        Ungraded = Ungraded, "ungraded" | "0" | "未定级";
    }
}

domain_enum! {
    /// Institution kind.
    InstitutionKind: InstitutionKind {
        Hospital = Hospital, "hospital" | "医院";
        Pharmacy = Pharmacy, "pharmacy" | "药店";
    }
}

domain_enum! {
    /// Designation agreement status.
    AgreementStatus: AgreementStatus {
        Active = Active, "active";
        Suspended = Suspended, "suspended";
        Terminated = Terminated, "terminated";
    }
}

domain_enum! {
    /// Catalogue class of a fee item.
    CatalogueClass: CatalogueClass {
        A = A, "a" | "甲" | "甲类";
        B = B, "b" | "乙" | "乙类";
        C = C, "c" | "丙" | "丙类" | "自费";
    }
}

domain_enum! {
    /// Kind of catalogue item.
    ItemCategory: ItemCategory {
        Drug = Drug, "drug" | "药品";
        Service = Service, "service" | "诊疗项目";
        Material = Material, "material" | "耗材";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for v in VisitKind::ALL {
            assert_eq!(VisitKind::from_proto(v.to_proto(), "f").unwrap(), *v);
            assert_eq!(VisitKind::parse(v.as_str(), "f").unwrap(), *v);
        }
        assert_eq!(
            CatalogueClass::parse("乙", "class").unwrap(),
            CatalogueClass::B
        );
        assert_eq!(
            HospitalLevel::parse("3", "level").unwrap(),
            HospitalLevel::Level3
        );
        let e = PersonType::parse("boss", "person_type")
            .unwrap_err()
            .to_string();
        assert!(e.contains("person_type") && e.contains("in_service"), "{e}");
        assert!(InsuranceType::from_proto(0, "insurance_type").is_err());
    }
}
