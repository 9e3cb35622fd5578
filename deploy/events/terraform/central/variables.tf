variable "event_bus_name" {
  description = "The bus the member accounts forward to: \"default\" uses this account's default bus; any other name creates that custom bus (then a second rule on the default bus catches this account's and region's own events)."
  type        = string
  default     = "default"
  validation {
    condition     = can(regex("^(default|[A-Za-z0-9_.-]{1,256})$", var.event_bus_name))
    error_message = "event_bus_name: default, or a custom bus name of letters, digits, . _ -."
  }
}

variable "organization_id" {
  description = "AWS Organizations id (o-...) whose accounts may PutEvents on the bus (condition aws:PrincipalOrgID). Empty: no bus policy, only this account's own events arrive."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^(o-[a-z0-9]{10,32})?$", var.organization_id))
    error_message = "organization_id: empty, or an AWS Organizations id such as o-a1b2c3d4e5."
  }
}

variable "queue_name" {
  description = "Name of the queue kms_exporter reads (--events.sqs-queue-url); the dead-letter queue is <queue_name>-dlq."
  type        = string
  default     = "kms-exporter-events"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,76}$", var.queue_name))
    error_message = "queue_name: 1 to 76 letters, digits, - or _ (the dead-letter queue adds -dlq)."
  }
}

variable "visibility_timeout_seconds" {
  description = "Seconds a received message stays hidden while kms_exporter re-reads the key; it is deleted only after the key's new state is published."
  type        = number
  default     = 120
  validation {
    condition     = var.visibility_timeout_seconds >= 30 && var.visibility_timeout_seconds <= 43200
    error_message = "visibility_timeout_seconds: 30 to 43200."
  }
}

variable "message_retention_seconds" {
  description = "Seconds a message is kept in the queue (default 1 day; the periodic refresh covers older events)."
  type        = number
  default     = 86400
  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds: 60 to 1209600."
  }
}

variable "dead_letter_retention_seconds" {
  description = "Seconds a message is kept in the dead-letter queue (default 14 days, the SQS maximum)."
  type        = number
  default     = 1209600
  validation {
    condition     = var.dead_letter_retention_seconds >= 60 && var.dead_letter_retention_seconds <= 1209600
    error_message = "dead_letter_retention_seconds: 60 to 1209600."
  }
}

variable "max_receive_count" {
  description = "Receives after which a message that was never deleted moves to the dead-letter queue."
  type        = number
  default     = 5
  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count: 1 to 1000."
  }
}

variable "tags" {
  description = "Tags for every resource that takes them."
  type        = map(string)
  default     = {}
}
