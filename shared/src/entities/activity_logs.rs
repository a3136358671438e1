use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "activity_logs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub case_id: i64,
    pub patient_id: String,
    /// Identity of the event; unique, so a redelivered event is recorded once.
    #[sea_orm(unique)]
    pub event_id: Uuid,
    pub action: String,
    pub description: String,
    pub scan_id: i64,
    /// The received body, kept for audit.
    pub payload: Json,
    /// Name of the configured secret that signed the request.
    pub signer: Option<String>,
    pub received_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::cases::Entity",
        from = "Column::CaseId",
        to = "super::cases::Column::Id"
    )]
    Case,
}

impl Related<super::cases::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Case.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
